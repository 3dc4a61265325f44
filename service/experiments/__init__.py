"""A/B arms, the arms a worker serves live, and the A/B report."""
