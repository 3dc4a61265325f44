"""The join: decisions and rewards within the reward window, written once as joined parts, and their reader."""
