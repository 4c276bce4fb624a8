"""fastsmtp: a fast, correct SMTP receiver to embed in Python programs."""
