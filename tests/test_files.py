import errno
import os
import pathlib
from unittest import mock

import pytest
from keras.src import testing

from keras_fourierft import files
from keras_fourierft import save_fourierft_weights
from tests.test_adapters import _adapted_functional


def _assert_names_the_target(info, target):
    message = str(info.value)
    assert str(target) in message
    assert ".tmp" not in message


class AtomicSaveErrorTest(testing.TestCase):
    def test_saving_onto_a_folder_names_the_target(self):
        tmp_path = pathlib.Path(self.get_temp_dir())
        target = tmp_path / "adapter.weights.h5"
        target.mkdir()
        with pytest.raises(IsADirectoryError) as info:
            save_fourierft_weights(_adapted_functional(), target)
        _assert_names_the_target(info, target)
        self.assertEqual(os.listdir(tmp_path), ["adapter.weights.h5"])

    def test_saving_into_a_missing_folder_names_the_target(self):
        tmp_path = pathlib.Path(self.get_temp_dir())
        target = tmp_path / "missing" / "adapter.weights.h5"
        with pytest.raises(FileNotFoundError, match="folder") as info:
            save_fourierft_weights(_adapted_functional(), target)
        _assert_names_the_target(info, target)

    def test_read_only_folder_says_the_save_needs_a_writable_folder(self):
        tmp_path = pathlib.Path(self.get_temp_dir())
        # A folder where files may be replaced but not created (a root process
        # may write anywhere, so the refusal is simulated).
        target = tmp_path / "adapter.weights.h5"
        target.write_bytes(b"previous")
        real_open = os.open

        def refuse_new_files(path, flags, *args):
            if flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, "Permission denied", path)
            return real_open(path, flags, *args)

        with mock.patch.object(files.os, "open", refuse_new_files):
            with pytest.raises(PermissionError, match="writable folder") as info:
                save_fourierft_weights(_adapted_functional(), target)
            _assert_names_the_target(info, target)
        self.assertEqual(target.read_bytes(), b"previous")
