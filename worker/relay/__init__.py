"""The relay: consume -> store -> run -> publish."""
