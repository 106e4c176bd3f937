"""Face tracking, expression/pose separation, conditioning renders and dataset preparation."""
