"""A simulated home page with known ground truth: listeners, shelves, click models, closed-loop
runs of any policy, vectorised log generation, sweeps on Ray and an HTTP driver.

Entry points: `simulator.world.World(WorldConfig.default(), rng)`, `simulator.oracle.OraclePolicy`,
`simulator.closed_loop.run_closed_loop`, `simulator.logging_mode.generate_slate_log`,
`simulator.sweep.run_sweep`, `simulator.http_driver.drive`.
"""
