"""SQL, one module per table group. Functions take a connection and return dataclasses."""
