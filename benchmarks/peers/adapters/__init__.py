"""One module per measured system; each is imported only inside that system's process."""
