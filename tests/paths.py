"""Where the tests find the repository and the committed test data, from any folder under tests/."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"  # committed inputs: a small corpus, the first night's replies
CORPUS = TEST_DATA / "corpus"
