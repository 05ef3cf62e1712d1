"""Where a source may resolve: under a model dir, an allowed path or the local HF cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cortex.errors import CortexError, InvalidRequest, SourceNotFound
from cortex.neuron import sources
from cortex.neuron.sources import Places, confined


@pytest.fixture
def layout(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """models/tiny (a model dir), outside/tiny (not under any place), an empty HF cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    (tmp_path / "models").mkdir()
    (tmp_path / "hf-cache").mkdir()
    shutil.copytree(tiny_model, tmp_path / "models" / "tiny")
    shutil.copytree(tiny_model, tmp_path / "outside" / "tiny")
    return tmp_path


def _places(root: Path, *allowed: Path) -> Places:
    return Places((root / "models",), allowed)


def _refused(source: str, places: Places) -> str:
    with pytest.raises(SourceNotFound) as info:
        sources.resolve(source, places)
    assert info.value.status == 404
    assert "is not a model under the neuron's model folders" in info.value.message
    return info.value.message


def test_a_name_and_a_path_under_a_model_dir_resolve(layout: Path) -> None:
    places = _places(layout)
    inside = (layout / "models" / "tiny").resolve()
    assert sources.resolve("tiny", places) == inside
    assert sources.resolve(str(layout / "models" / "tiny") + "/", places) == inside
    assert sources.resolve(str(layout / "models" / "tiny" / ".." / "tiny"), places) == inside


def test_folders_outside_every_place_are_refused_without_naming_them(layout: Path) -> None:
    places = _places(layout)
    outside = layout / "outside" / "tiny"
    (layout / "models" / "link").symlink_to(outside, target_is_directory=True)
    spellings = [
        str(outside),  # an absolute path
        "../outside/tiny",  # up out of a model dir (joined to it)
        str(layout / "models" / ".." / "outside" / "tiny"),
        "link",  # a link inside a model dir pointing out
        str(layout / "models" / "link"),
        f"/proc/self/root{outside}",  # the same folder through /proc
    ]
    for source in spellings:
        message = _refused(source, places)
        # Only what the client sent and the configured folders are said, never the folder
        # a link or ``..`` led to.
        assert str(outside) not in message.replace(repr(source), "")


def test_an_outside_path_gets_the_same_answer_whether_or_not_it_exists(layout: Path) -> None:
    places = _places(layout)
    real = _refused(str(layout / "outside" / "tiny"), places)
    missing = _refused(str(layout / "outside" / "nothing"), places)
    unreadable = layout / "outside" / "locked"
    unreadable.mkdir(mode=0)
    try:
        locked = _refused(str(unreadable / "tiny"), places)
    finally:
        unreadable.chmod(0o700)
    shown = [m.split(" is not", 1)[1] for m in (real, missing, locked)]
    assert shown[0] == shown[1] == shown[2]


def test_allowed_paths_admit_a_folder_and_what_is_under_it(layout: Path) -> None:
    outside = layout / "outside"
    tiny = (outside / "tiny").resolve()
    assert sources.resolve(str(outside / "tiny"), _places(layout, outside)) == tiny
    assert sources.resolve(str(outside / "tiny"), _places(layout, outside / "tiny")) == tiny
    (layout / "models" / "link").symlink_to(outside / "tiny", target_is_directory=True)
    assert sources.resolve("link", _places(layout, outside / "tiny")) == tiny
    # An allowed path is not searched by name: names are for model dirs.
    _refused("tiny", Places((), (outside,)))


def test_a_link_into_the_hf_cache_resolves(layout: Path) -> None:
    snapshot = layout / "hf-cache" / "models--org--tiny" / "snapshots" / "abc"
    shutil.copytree(layout / "models" / "tiny", snapshot)
    (layout / "models" / "cached").symlink_to(snapshot, target_is_directory=True)
    assert sources.resolve("cached", _places(layout)) == snapshot.resolve()


def test_a_hf_cache_answer_outside_the_cache_is_refused(
    layout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "_hf_cache_snapshot", lambda _: layout / "outside" / "tiny")
    _refused("org/tiny", _places(layout))


def test_names_no_filesystem_takes_are_still_400(layout: Path) -> None:
    # (Longer paths than PATH_MAX are refused before this, by protocol.lifecycle.)
    for source in ("s" * 300, "/tmp/s\x00x", "~no-such-user-of-cortex/m"):
        with pytest.raises(InvalidRequest):
            sources.resolve(source, _places(layout))


def test_a_link_loop_is_refused_outside_and_explained_inside(layout: Path) -> None:
    loop = layout / "outside" / "loop"
    loop.symlink_to(loop)
    _refused(str(loop), _places(layout))
    inner = layout / "models" / "loop"
    inner.symlink_to(inner)
    with pytest.raises(CortexError) as info:
        sources.resolve("loop", _places(layout))
    assert info.value.status in (400, 404)
    assert str(layout / "outside") not in info.value.message


def test_confined_follows_links_before_checking(layout: Path) -> None:
    roots = [(layout / "models").resolve()]
    link = layout / "outside" / "into-models"
    link.symlink_to(layout / "models" / "tiny", target_is_directory=True)
    assert confined(link, roots) == (layout / "models" / "tiny").resolve()
    assert confined(layout / "outside" / "tiny", roots) is None
    assert confined(layout / "models" / "absent", roots) is None
    assert confined(Path(os.sep), roots) is None


def test_available_lists_only_folders_under_the_places(layout: Path) -> None:
    (layout / "models" / "link").symlink_to(layout / "outside" / "tiny", target_is_directory=True)
    listed = {m.id for m in sources.available(_places(layout))}
    assert listed == {"tiny"}
    allowed = {m.id for m in sources.available(_places(layout, layout / "outside"))}
    assert allowed == {"tiny", "link"}


def test_an_id_from_a_path_does_not_follow_a_link_out(layout: Path) -> None:
    places = _places(layout)
    link = layout / "models" / "escape"
    link.symlink_to(layout / "outside" / "tiny", target_is_directory=True)
    assert sources.default_id(str(link), places) == "escape"
    assert sources.default_id(f"{layout}/models/tiny/", places) == "tiny"
    assert sources.default_id(str(layout / "outside" / "tiny" / ".."), places) == "outside"
    assert sources.default_id(str(link)) == "tiny"  # the operator's own names (cortex up)
