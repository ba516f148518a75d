"""benchmarks/reproduce_maml.py names where its targets come from and which code produced its table."""
import importlib.util
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("reproduce_maml", ROOT / "benchmarks" / "reproduce_maml.py")
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)


def _report(mean_after_one_step):
    steps = {0: [3.0, 0.2], 1: [mean_after_one_step, 0.03], 5: [0.2, 0.02], 10: [0.1, 0.01]}
    return {"algo": "maml", "run": "nowhere", "rows": [{"model": "maml", "shots": 10, "steps": steps}]}


def test_the_targets_name_the_paper_not_an_issue():
    met = reproduce.targets_report(reproduce.check_targets([_report(0.30)]))
    missed = reproduce.targets_report(reproduce.check_targets([_report(0.40)]))
    for text in (met, missed):
        assert "Finn et al. 2017" in text and "sinusoid regression" in text and "issue" not in text
    assert met.endswith("-> all met")
    assert missed.endswith("-> MISSED: K=10 after 1 step(s): 0.400 > 0.35")


def test_the_table_names_the_commits_that_trained_and_evaluated_it(tmp_path):
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    commit = reproduce.source_commit()
    if head.returncode == 0:
        assert commit.split("+")[0] == head.stdout.strip()
    assert reproduce.source_commit(tmp_path) == "unknown (not a git checkout)"
    run = tmp_path / "maml"
    run.mkdir()
    for recorded in ("abc1234", "abc1234", "def5678"):
        reproduce.record_training_commit(run, recorded)
    assert reproduce.trained_at(run) == ["abc1234", "def5678"]
    line = reproduce.provenance([{"algo": "maml", "run": str(run)}, {"algo": "fomaml", "run": str(tmp_path)}],
                                "0123abc")
    assert line == "(commit 0123abc: evaluated here; maml trained at abc1234, def5678; fomaml trained at not recorded)"
