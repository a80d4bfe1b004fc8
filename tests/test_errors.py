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
