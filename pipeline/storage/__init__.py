"""Where stage outputs live and how they are written (outputs), and whole directories on S3 (s3)."""
