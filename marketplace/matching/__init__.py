"""The matching engine: plain Python over plain data (no ORM inside). See ``engine``."""
