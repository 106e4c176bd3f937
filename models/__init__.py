"""Networks, losses, training, export and inference engines."""
