"""The promote stage's helpers: the gate, its paired bootstrap, and the HTML evaluation report."""
