import io
import json
import os
import tempfile
import zipfile

import numpy as np
from keras.src import testing

from keras_fourierft import reading


def _safetensors(header, data=b""):
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


class ReadJsonTest(testing.TestCase):
    def test_reads_an_archive_member_within_its_limit(self):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("config.json", json.dumps({"a": [1, 2]}))
            archive.writestr("big.json", json.dumps({"a": "x" * 5000}))
        with zipfile.ZipFile(buffer) as archive:
            with archive.open("config.json") as member:
                self.assertEqual(
                    reading.read_json(member, "m.keras/config.json"), {"a": [1, 2]}
                )
            with archive.open("big.json") as member:
                with self.assertRaisesRegex(ValueError, "m.keras/big.json.*4096"):
                    reading.read_json(member, "m.keras/big.json", max_bytes=4096)

    def test_invalid_json_names_the_document(self):
        with self.assertRaisesRegex(ValueError, "doc.json.*not valid JSON"):
            reading.read_json(io.BytesIO(b"{nope"), "doc.json")

    def test_deeply_nested_json_is_refused_as_invalid(self):
        with self.assertRaisesRegex(ValueError, "deep.json.*not valid JSON"):
            reading.read_json(io.BytesIO(b"[" * 100_000), "deep.json")


class SafetensorsHeaderTest(testing.TestCase):
    def _write(self, content):
        handle, path = tempfile.mkstemp(suffix=".safetensors", dir=self.get_temp_dir())
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        return path

    def test_bfloat16_and_float16_are_read_as_float32(self):
        values = np.array([1.5, -2.0, 0.15625, 3e38], "float32")
        bf16 = (values.view("<u4") >> 16).astype("<u2").tobytes()
        f16 = values[:3].astype("<f2").tobytes()
        header = {
            "b": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]},
            "h": {"dtype": "F16", "shape": [3], "data_offsets": [8, 14]},
        }
        path = self._write(_safetensors(header, bf16 + f16))
        parsed = reading.safetensors_header(path, "w")
        tensors = reading.read_tensors(path, "w", parsed, ["b", "h"])
        # bfloat16 keeps float32's top 16 bits: these values are exact.
        self.assertAllEqual(tensors["b"][:3], values[:3])
        self.assertEqual(tensors["b"].dtype, np.float32)
        self.assertAllEqual(tensors["h"], values[:3])

    def test_inconsistent_headers_are_refused_before_reading(self):
        cases = {
            "declares": b"\xff" * 8 + b"{}",
            "declared as": _safetensors(
                {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}},
                b"\0" * 8,
            ),
            "does not follow": _safetensors(
                {
                    "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                    "y": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                },
                b"\0" * 8,
            ),
            "describes .* bytes, the file has": _safetensors(
                {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                b"\0" * 12,
            ),
            "declared as .*C64": _safetensors(
                {"x": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}},
                b"\0" * 8,
            ),
        }
        for message, content in cases.items():
            path = self._write(content)
            with self.assertRaisesRegex(ValueError, f"'w'.*{message}"):
                reading.safetensors_header(path, "w")
