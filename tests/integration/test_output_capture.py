"""pytest's output capture survives Airflow setting up its logging in a test that imported the metrics: the heavy
tiers (containers, faults, postgres) run dag.test() and capture with capfd, under pytest's default capture.

The cause this guards against (tests/conftest.py, _absl_handler_on_the_real_stderr): rouge_score imports absl,
whose logging handler keeps the sys.stderr of the moment it is made and closes it when closed, unless it is the
current sys.stderr; `import airflow` closes every existing handler. Made while pytest collects, the handler held
pytest's capture file, closed it in a capfd test, and the pytest process died ("lost sys.stderr")."""

import os
import subprocess
import sys

from paths import REPO

INNER = '''
from pipeline.evaluation import metrics  # noqa: F401  (imports rouge_score, so absl, while pytest collects)


def test_airflow_sets_up_its_logging_while_capfd_captures(capfd):
    import airflow  # noqa: F401  (configures its logging: closes every existing handler)

    print("captured")
    assert "captured" in capfd.readouterr().out


def test_a_later_test_still_has_its_output_captured():
    print("still captured")
'''


def run_pytest(directory, *plugins: str) -> subprocess.CompletedProcess:
    (directory / "test_inner.py").write_text(INNER)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *plugins,
                           "--rootdir", str(directory), str(directory / "test_inner.py")],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO / "tests")})


def test_without_the_fix_the_pytest_process_dies(tmp_path):
    result = run_pytest(tmp_path)
    assert result.returncode != 0 and "lost sys.stderr" in result.stdout + result.stderr


def test_with_the_projects_conftest_both_tests_pass_with_their_output_captured(tmp_path):
    result = run_pytest(tmp_path, "-p", "conftest")
    assert result.returncode == 0 and "2 passed" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
