"""Coordinate tables: CT-GAN (spaces in the header, world or voxel), LUNA16, the tamper manifest."""

from __future__ import annotations

import json

import pytest

from medfake.data.samples import sample_path
from medfake.errors import MedfakeError
from medfake.io.tables import (Location, ManifestRow, append_manifest, read_ctgan, read_locations, read_luna16,
                               read_manifest, write_ctgan, write_luna16)


def test_ctgan_table_with_spaces_in_the_header_world_and_voxel(tmp_path):
    table = tmp_path / "coords.csv"
    table.write_text("filename, x, y, z, tamper_type\nscan1, -47.40, -30.17, -169.62, inject\n"
                     "scan2, 218, 359, 33, remove\nscan3, 1, 2, , inject\n")
    world = read_ctgan(table, "world")
    assert [loc.filename for loc in world] == ["scan1", "scan2"]  # empty z skipped, as CT-GAN does
    assert world[0].coords == (-47.40, -30.17, -169.62) and world[0].kind == "inject"
    voxel = read_ctgan(table, "vox")
    assert voxel[1].coords == (33.0, 359.0, 218.0) and voxel[1].system == "vox"  # x,y,z columns → z,y,x


def test_ctgan_round_trip_keeps_world_and_voxel_coordinates(tmp_path):
    locations = [Location("a", (-21.8586, -120.5358, -611.4964), "world", "inject"),
                 Location("b", (33.0, 359.0, 218.0), "vox", "remove")]
    path = write_ctgan(locations, tmp_path / "out.csv")
    assert path.read_text().splitlines()[0] == "filename,x,y,z,type"
    world = read_ctgan(path, "world")[0]
    assert world.coords == pytest.approx(locations[0].coords)
    assert read_ctgan(path, "vox")[1].coords == (33.0, 359.0, 218.0)


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "1,5"])
def test_bad_numbers_give_one_line_errors_with_the_row(tmp_path, value):
    table = tmp_path / "bad.csv"
    table.write_text(f'filename,x,y,z\nscan1,1,2,3\nscan2,"{value}",2,3\n')
    with pytest.raises(MedfakeError) as error:
        read_ctgan(table)
    message = error.value.one_line()
    assert message.startswith(str(table)) and "row 3: column x" in message and "\n" not in message


def test_missing_columns_and_non_text_files_are_refused(tmp_path):
    table = tmp_path / "cols.csv"
    table.write_text("filename,x,y\nscan,1,2\n")
    with pytest.raises(MedfakeError, match="missing column"):
        read_ctgan(table)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(MedfakeError, match="not a"):
        read_ctgan(binary)
    with pytest.raises(MedfakeError, match="world or vox"):
        read_ctgan(table, "mm")


def test_luna16_annotations_of_lung1():
    (row,) = read_luna16(sample_path("radiomics-annotations"))
    assert row.filename == "lung1" and row.system == "world" and row.kind == "nodule"
    assert row.coords == pytest.approx((-21.8586, -120.5358, -611.4964))
    assert row.diameter_mm == pytest.approx(13.7502)


def test_read_locations_recognises_each_table(tmp_path):
    luna = write_luna16([{"seriesuid": "s", "coordX": 1.5, "coordY": -2.0, "coordZ": 3.25, "diameter_mm": 6.0}],
                        tmp_path / "annotations.csv")
    assert read_locations(luna)[0].diameter_mm == 6.0
    manifest = tmp_path / "manifest.csv"
    row = ManifestRow("in.nrrd", "out", -21.86, -120.54, -611.5, 33, 359, 218, "inject", "ctgan", "m1",
                      json.dumps({"seed": 3}), "2026-01-01T00:00:00Z")
    append_manifest([row], manifest)
    append_manifest([row], manifest)  # appending does not repeat the header
    assert manifest.read_text().count("world_x") == 1
    rows = read_manifest(manifest)
    assert rows == [row, row] and json.loads(rows[0].parameters) == {"seed": 3}
    (location, _) = read_locations(manifest)
    assert location.system == "world" and location.coords == (-21.86, -120.54, -611.5)
    ctgan = tmp_path / "ctgan.csv"
    ctgan.write_text("filename,x,y,z\nscan,1,2,3\n")
    assert read_locations(ctgan, "vox")[0].coords == (3.0, 2.0, 1.0)

