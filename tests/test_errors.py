"""The typed errors: each kind is also the built-in it means, and keeps its fields across processes."""

import pickle

import pytest

from core import errors

KINDS = {
    errors.InvalidInput: ValueError,
    errors.SourceUnreadable: OSError,
    errors.OutputExists: FileExistsError,
    errors.OutputIsInput: ValueError,
    errors.WriteFailed: OSError,
    errors.MissingDependency: ImportError,
    errors.DownloadFailed: OSError,
    errors.VerificationFailed: errors.DownloadFailed,
}


@pytest.mark.parametrize("kind,builtin", KINDS.items(), ids=lambda k: getattr(k, "__name__", ""))
def test_kind_is_the_builtin_and_the_root(kind, builtin):
    err = kind("the file is gone.", "put it back.", path="/data/x.tif")
    assert isinstance(err, builtin) and isinstance(err, errors.RemoteClipError)
    assert (err.problem, err.fix, err.path) == ("the file is gone.", "put it back.", "/data/x.tif")
    assert str(err) == "the file is gone. Fix: put it back."


@pytest.mark.parametrize("kind", [errors.RemoteClipError, errors.ModelError, *KINDS], ids=lambda k: k.__name__)
def test_fields_survive_pickling(kind):
    # Dask workers raise, the client reports: type and fields must cross the process boundary
    err = pickle.loads(pickle.dumps(kind("p.", "f.", path="/p")))
    assert type(err) is kind and (err.problem, err.fix, err.path) == ("p.", "f.", "/p")


def test_invalid_input_names_the_parameter():
    err = pickle.loads(pickle.dumps(errors.InvalidInput("bands must be positive.", param="bands")))
    assert err.param == "bands" and err.fix is None and str(err) == "bands must be positive."


# ------------------------------------------------------------------------------ every raise is a kind

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
RAISING = ("core", "remoteclip_qgis", "training")


def _sources():
    for top in RAISING:
        yield from sorted((ROOT / top).rglob("*.py"))


def _raises_of_root(path) -> list[int]:
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    return sorted(n.lineno for n in ast.walk(tree)   # raised, or made to be raised later
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "RemoteClipError")


def test_the_root_class_is_never_raised_itself():
    """Callers tell problems apart by kind: every raise in core, the plugin and training names one."""
    offenders = [f"{p.relative_to(ROOT)}:{ln}" for p in _sources() for ln in _raises_of_root(p)]
    assert offenders == []


def test_the_raise_scan_sees_a_raise_of_the_root(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('def f():\n    raise RemoteClipError("x.", "y.")\n\n\nraise InvalidInput("x.")\n'
                      'bad = RemoteClipError("z.")\n', encoding="utf-8")
    assert _raises_of_root(sample) == [2, 6]


def _swallowing_handlers(path) -> list[int]:
    """Lines of ``except RemoteClipError:`` handlers (or ``suppress(RemoteClipError)``) that neither use the
    error nor raise: an error taken as "not found"."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.ExceptHandler) and n.type is not None:
            names = {x.id for x in ast.walk(n.type) if isinstance(x, ast.Name)}
            if "RemoteClipError" in names and n.name is None \
                    and not any(isinstance(x, ast.Raise) for b in n.body for x in ast.walk(b)):
                out.append(n.lineno)
        elif isinstance(n, ast.Call) and getattr(n.func, "attr", getattr(n.func, "id", None)) == "suppress" \
                and any(isinstance(a, ast.Name) and a.id == "RemoteClipError" for a in n.args):
            out.append(n.lineno)
    return out


def test_no_error_is_taken_as_a_lookup_miss():
    """A lookup that may find nothing has a form that returns None (catalog.lookup,
    architectures.find_architecture); a user's error is never swallowed as "not there"."""
    offenders = [f"{p.relative_to(ROOT)}:{ln}" for p in _sources() if p.parts[-2] != "tests"
                 for ln in _swallowing_handlers(p)]
    assert offenders == []


def test_the_handler_scan_sees_a_swallowed_error(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("try:\n    f()\nexcept RemoteClipError:\n    x = None\n"
                      "try:\n    f()\nexcept RemoteClipError:\n    raise\n"
                      "with contextlib.suppress(RemoteClipError):\n    f()\n", encoding="utf-8")
    assert _swallowing_handlers(sample) == [3, 9]


def test_a_broken_model_catalogue_is_its_own_error_not_an_unknown_name(tmp_path):
    """--model NAME with a damaged catalog.json in the models folder: the catalogue's error (its path and
    the fix), not a silent "no such model" that later reads as "bundle not found"."""
    from core.runtime.catalog import USER_CATALOG, resolve_model

    (tmp_path / USER_CATALOG).write_text("{not json", encoding="utf-8")
    with pytest.raises(errors.ModelError) as err:
        resolve_model("remoteclip-vit-b-32", tmp_path)
    assert err.value.path == str(tmp_path / USER_CATALOG)
    assert resolve_model(str(tmp_path), tmp_path) == str(tmp_path)   # a path is a path, catalogue or not


def _bad_error_keywords(path) -> list[str]:
    """Calls of an error kind with a keyword its constructor does not take (``param=`` on anything but
    InvalidInput): a TypeError at the moment the user's error should be shown."""
    import ast
    import inspect

    out = []
    for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
            kind = getattr(errors, n.func.id, None)
            if isinstance(kind, type) and issubclass(kind, errors.RemoteClipError):
                allowed = set(inspect.signature(kind.__init__).parameters)
                out += [f"{n.lineno} {n.func.id}({k.arg}=)" for k in n.keywords if k.arg not in allowed]
    return out


def test_every_error_is_made_with_keywords_its_kind_takes():
    offenders = [f"{p.relative_to(ROOT)}:{b}" for p in _sources() if p.parts[-2] != "tests"
                 for b in _bad_error_keywords(p)]
    assert offenders == []


def test_the_keyword_scan_sees_a_param_on_an_unreadable_source(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("raise InvalidInput('a', param='bands')\nraise SourceUnreadable('a', path='x', param='b')\n",
                      encoding="utf-8")
    assert _bad_error_keywords(sample) == ["2 SourceUnreadable(param=)"]
