"""What every stage process needs, whatever its stage: allocator, termination, progress, failpoints, free ports."""
