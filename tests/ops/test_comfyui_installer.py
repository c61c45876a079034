"""The ComfyUI installer (ops/comfyui.py) without a real ComfyUI: what a dry run shows, that every
failure names its step and exits 1 leaving nothing that looks installed, and clean-up. The real
install, its validation and the custom node are tested against the real ComfyUI
(tests/renders/test_real_comfyui.py, through tests/realcomfyui.py)."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from ops import comfyui
from ops.comfyui import CustomNode, Home, InstallError, Source, Switcher, cleanup, dev_instance, install_key

# Validation reads the node classes of the registered workflows (workflows.services.graphs_in_use).
pytestmark = pytest.mark.django_db

PINS = 'torch = "cuda"\ntorch_packages = ["torch==2.14.1", "torchvision==0.29.1"]\nextra_packages = ["requests"]\n'


@pytest.fixture
def comfy_repo(tmp_path: Path) -> Path:
    """A git repository that looks like a ComfyUI release, tagged v1."""
    repo = tmp_path / "ComfyUI.git"
    repo.mkdir()
    (repo / "main.py").write_text("print('not really ComfyUI')\n")
    (repo / "requirements.txt").write_text("pyyaml\n")
    for command in (
        ["init", "--quiet"],
        ["add", "."],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "v1"],
        ["tag", "v1"],
    ):
        subprocess.run(["git", *command], cwd=repo, check=True)
    return repo


def run(tmp_path: Path, *args: str, source: str = PINS) -> tuple[int, str]:
    declaration = tmp_path / "source.toml"
    declaration.write_text('[comfyui]\ngit_url = "x"\nref = "v1"\n' + source)
    out = io.StringIO()
    code = comfyui.main(["--home", str(tmp_path / "home"), *args[:1], "--source", str(declaration), *args[1:]], out)
    return code, out.getvalue()


def test_a_dry_run_shows_every_step_and_changes_nothing(tmp_path, comfy_repo):
    code, out = run(tmp_path, "install", "--git-url", str(comfy_repo), "--dry-run")

    assert code == 0
    for step in ("resolve", "clone", "venv", "torch", "requirements", "torch-check", "model-paths", "validate"):
        assert f"[{step}]" in out, step
    assert "would run: " in out and "-c " in out  # every pip run under the torch constraint
    assert "torch==2.14.1 torchvision==0.29.1" in out and "requests" in out
    assert not (tmp_path / "home").exists()


def test_an_unknown_ref_fails_at_the_resolve_step(tmp_path, comfy_repo, capsys):
    code, _ = run(tmp_path, "install", "--git-url", str(comfy_repo), "--ref", "v9")
    assert code == 1
    assert "FAILED at step resolve: no ref 'v9'" in capsys.readouterr().err


def test_a_custom_node_without_a_pin_is_refused_before_anything_is_installed(tmp_path, comfy_repo, capsys):
    node = '[[custom_nodes]]\nname = "loose"\ngit_url = "https://example.org/loose.git"\ncommit = "main"\n'
    code, _ = run(tmp_path, "install", "--git-url", str(comfy_repo), source=PINS + node)
    assert code == 1
    assert "FAILED at step source" in capsys.readouterr().err
    assert not (tmp_path / "home" / "installs").exists()


def test_a_failed_pip_step_exits_1_and_leaves_no_install(tmp_path, comfy_repo, capsys):
    source = 'torch = "cuda"\ntorch_packages = ["torch==0.0.1"]\n'
    code, _ = run(tmp_path, "install", "--git-url", str(comfy_repo), source=source)

    assert code == 1
    err = capsys.readouterr().err
    assert "FAILED at step torch: `" in err and "torch==0.0.1" in err
    installs = tmp_path / "home" / "installs"
    assert [p.name.startswith(".building-") for p in installs.iterdir()] == [True]  # kept for its log
    assert not (tmp_path / "home" / "install.json").exists()
    assert comfyui.main(["--home", str(tmp_path / "home"), "status"], io.StringIO()) == 1


def test_the_install_key_changes_with_every_pin_and_only_then():
    source = Source("https://example.org/c.git", "v1", "cuda", ("torch==2.14.1",))
    same = Source("file:///mirror/c.git", "v1", "cuda", ("torch==2.14.1",))
    assert install_key(source, "a" * 40) == install_key(same, "a" * 40)  # a mirror is the same release
    assert install_key(source, "a" * 40) != install_key(source, "b" * 40)
    other_torch = Source(source.git_url, "v1", "cuda", ("torch==2.14.0",))
    assert install_key(source, "a" * 40) != install_key(other_torch, "a" * 40)
    node = CustomNode("n", git_url="https://example.org/n.git", commit="c" * 40)
    with_node = Source(source.git_url, "v1", "cuda", ("torch==2.14.1",), custom_nodes=(node,))
    assert install_key(source, "a" * 40) != install_key(with_node, "a" * 40)


def test_cleanup_keeps_the_current_and_the_previous_install(tmp_path):
    home = Home(tmp_path)
    for name in ("v1-a", "v2-b", "v3-c", ".building-v4-d-xyz"):
        (home.installs / name).mkdir(parents=True)
    (tmp_path / "install.json").write_text(json.dumps({"current": "v3-c", "previous": "v2-b"}))

    dry = cleanup(home, dry_run=True, out=io.StringIO())
    assert sorted(p.name for p in dry) == [".building-v4-d-xyz", "v1-a"] and (home.installs / "v1-a").exists()
    cleanup(home, dry_run=False, out=io.StringIO())
    assert sorted(p.name for p in home.installs.iterdir()) == ["v2-b", "v3-c"]


def fake_install(home: Home, name: str) -> None:
    (home.installs / name / "ComfyUI").mkdir(parents=True)
    (home.installs / name / "install.json").write_text(json.dumps({"name": name, "ref": name}))


def test_a_switch_whose_instances_fail_switches_back_and_fails(tmp_path, simulator):
    """The instance is the simulator; the restart command succeeds only on the good install."""
    home = Home(tmp_path)
    for name in ("old", "good", "bad"):
        fake_install(home, name)
    home.write_record("old", None)
    home.write_record("good", "old")
    port = int(simulator.url.rsplit(":", 1)[1])
    restart = f'test "$(readlink {tmp_path}/current)" = installs/good'
    switcher = Switcher(home, [0], restart, port_base=port, required_classes={"EmptyImage"}, out=io.StringIO())

    with pytest.raises(InstallError) as caught:
        switcher.switch("bad")

    assert caught.value.step == "validate" and "rolled back to good" in str(caught.value)
    assert (tmp_path / "current").readlink() == Path("installs/good")
    assert (home.record() or {})["current"] == "good" and (home.record() or {})["previous"] == "old"
    assert "[rollback] switching back to good" in switcher.out.getvalue()  # type: ignore[attr-defined]


def test_a_switch_to_an_install_that_validates_keeps_the_old_one_as_previous(tmp_path, simulator):
    home = Home(tmp_path)
    for name in ("old", "new"):
        fake_install(home, name)
    home.write_record("old", None)
    port = int(simulator.url.rsplit(":", 1)[1])
    switcher = Switcher(home, [0], "true", port_base=port, required_classes={"EmptyImage"}, out=io.StringIO())

    switcher.switch("new")

    assert (tmp_path / "current").readlink() == Path("installs/new")
    assert (home.record() or {})["previous"] == "old"


def test_a_switch_fails_when_an_instance_lacks_a_workflow_node_class(tmp_path, simulator):
    home = Home(tmp_path)
    for name in ("old", "new"):
        fake_install(home, name)
    home.write_record("old", None)
    port = int(simulator.url.rsplit(":", 1)[1])
    switcher = Switcher(home, [0], "true", port_base=port, required_classes={"NoSuchNode"}, out=io.StringIO())

    with pytest.raises(InstallError) as caught:
        switcher.switch("new")
    assert "/object_info lacks NoSuchNode" in str(caught.value)
    assert (tmp_path / "current").readlink() == Path("installs/old")


def test_make_run_runs_the_current_install_on_cpu_and_says_when_there_is_none(settings, tmp_path):
    settings.BOOKRENDER_COMFYUI_HOME = str(tmp_path)
    with pytest.raises(SystemExit, match="no ComfyUI is installed in"):
        dev_instance(port=18188, data_dir=tmp_path / "data")

    fake_install(Home(tmp_path), "v1-a")
    record = json.loads((tmp_path / "installs" / "v1-a" / "install.json").read_text())
    record["launcher"] = str(tmp_path / "installs" / "v1-a" / "launch")
    (tmp_path / "installs" / "v1-a" / "install.json").write_text(json.dumps(record))
    Home(tmp_path).write_record("v1-a", None)

    argv, env = dev_instance(port=18188, data_dir=tmp_path / "data")
    assert argv == [record["launcher"], "0", "--cpu"]
    assert env == {"CUI_PORT_BASE": "18188", "CUI_DATA_DIR": str(tmp_path / "data")}
