"""Style engines: components that turn an aligned face crop into a styled one, identity preserved."""
