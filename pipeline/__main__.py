"""`python -m pipeline <stage> ...`: the one command behind every Airflow task and container entrypoint."""

import sys

from pipeline.process import allocator

allocator.use_tcmalloc()  # before the heavy imports: re-executes this process on tcmalloc where it is installed

from pipeline.cli import main  # noqa: E402

sys.exit(main())
