"""shelf-bandit's command line: one entry point, `shelfbandit`, with a subcommand per job."""
