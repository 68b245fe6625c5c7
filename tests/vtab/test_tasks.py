"""The VTAB-1k task registry: 19 tasks, their classes and groups, aliases, mini tasks."""
import pytest

import vtab
from vtab.tasks import ALIASES, _normalise

EXPECTED = {  # NOAH folder name -> (classes, group), in the paper's column order
    "cifar": (100, "natural"), "caltech101": (102, "natural"), "dtd": (47, "natural"),
    "oxford_flowers102": (102, "natural"), "oxford_iiit_pet": (37, "natural"),
    "svhn": (10, "natural"), "sun397": (397, "natural"),
    "patch_camelyon": (2, "specialized"), "eurosat": (10, "specialized"),
    "resisc45": (45, "specialized"), "diabetic_retinopathy": (5, "specialized"),
    "clevr_count": (8, "structured"), "clevr_dist": (6, "structured"),
    "dmlab": (6, "structured"), "kitti": (4, "structured"),
    "dsprites_loc": (16, "structured"), "dsprites_ori": (16, "structured"),
    "smallnorb_azi": (18, "structured"), "smallnorb_ele": (9, "structured"),
}


def test_nineteen_tasks_in_paper_order_with_classes_and_groups():
    assert vtab.VTAB_TASKS == tuple(EXPECTED)
    for name, (classes, group) in EXPECTED.items():
        assert vtab.TASKS[name] == vtab.TaskInfo(name, classes, group, mini=False)


def test_groups_partition_the_nineteen():
    assert list(vtab.GROUPS) == ["natural", "specialized", "structured"]
    assert [len(v) for v in vtab.GROUPS.values()] == [7, 4, 8]
    assert sum(vtab.GROUPS.values(), ()) == vtab.VTAB_TASKS


def test_mini_tasks_are_registered_and_flagged():
    minis = {n: (i.num_classes, i.group, i.role) for n, i in vtab.TASKS.items() if i.mini}
    assert minis == {"mini_digits": (10, "natural", "design"), "mini_count": (8, "structured", "design"),
                     "mini_loc": (8, "structured", "design"), "mini_ori": (8, "structured", "design"),
                     "mini_texture": (8, "natural", "confirmation"),
                     "mini_shapes": (8, "natural", "confirmation"),
                     "mini_occluded": (10, "natural", "confirmation"),
                     "mini_cells": (2, "specialized", "confirmation"),
                     "mini_land": (6, "specialized", "confirmation"),
                     "mini_dist": (6, "structured", "confirmation"),
                     "mini_elev": (6, "structured", "confirmation")}
    assert set(vtab.MINI_TASKS) == set(minis)
    assert not set(vtab.MINI_TASKS) & set(vtab.VTAB_TASKS)


@pytest.mark.parametrize("alias, name", [
    ("cifar100", "cifar"), ("CIFAR-100", "cifar"), ("caltech", "caltech101"),
    ("flowers102", "oxford_flowers102"), ("oxford_pet", "oxford_iiit_pet"),
    ("pets", "oxford_iiit_pet"), ("sun", "sun397"), ("camelyon", "patch_camelyon"),
    ("retinopathy", "diabetic_retinopathy"), ("clevr_count_all", "clevr_count"),
    ("clevr_closest_object_distance", "clevr_dist"), ("kitti_distance", "kitti"),
    ("dsprites_location", "dsprites_loc"), ("dsprites_orientation", "dsprites_ori"),
    ("smallnorb_azimuth", "smallnorb_azi"), ("smallnorb_elevation", "smallnorb_ele"),
    ("vtab-dtd", "dtd"), ("svhn_cropped", "svhn"), (" eurosat ", "eurosat"),
    ("mini_digits", "mini_digits"),
])
def test_aliases_resolve_to_noah_names(alias, name):
    assert vtab.resolve_task(alias).name == name


def test_every_alias_targets_a_task_and_is_normalised():
    for alias, name in ALIASES.items():
        assert name in vtab.TASKS and _normalise(alias) == alias, alias


def test_resolve_accepts_a_task_info():
    info = vtab.TASKS["dtd"]
    assert vtab.resolve_task(info) is info


def test_unknown_task_lists_known_names_on_one_line():
    with pytest.raises(vtab.DataError) as err:
        vtab.resolve_task("imagenet")
    message = str(err.value)
    assert "'imagenet'" in message and "\n" not in message
    assert all(name in message for name in vtab.TASKS)


def test_protocols_name_the_splits():
    assert vtab.PROTOCOLS == {
        "val": {"train": "train800", "search": "val200", "test": "test", "fit": "train800"},
        "paper": {"train": "train800val200", "search": "test", "test": "test",
                  "fit": "train800val200"},
        "retrain": {"train": "train800", "search": "val200", "test": "test",
                    "fit": "train800val200"},
    }
    assert {s for p in vtab.PROTOCOLS.values() for s in p.values()} <= set(vtab.SPLITS)
