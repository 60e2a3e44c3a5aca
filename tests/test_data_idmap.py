"""IdMap (raw <-> inner) and the one cross-party id rule, ``id_key``."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.data.idmap import IdError, IdMap, UnknownIdError, id_key, id_keys
from fedrec.psi.ids import normalize_id


@pytest.mark.parametrize(("raw", "key"), [
    ("u7", "u7"), (7, "7"), (np.int64(-3), "-3"), (np.uint8(200), "200"), ("007", "007"), (" a", " a"),
    ("Jose\u0301", "Jose\u0301"),
])
def test_key_is_the_canonical_text(raw: object, key: str) -> None:
    assert id_key(raw) == key and IdMap.key(raw) == key


@pytest.mark.parametrize(("bad", "message"), [
    (1.0, "id 1.0 of type float; ids must be strings or integers"),
    (np.float32(2), "of type float32"),
    (True, "boolean id True"),
    (np.bool_(False), "boolean id False"),
    (None, "of type NoneType"),
    (b"u1", "of type bytes"),
    ("", "empty id"),
])
def test_other_ids_are_refused_naming_source_and_row(bad: object, message: str) -> None:
    with pytest.raises(IdError, match=f"users.csv: row 4: .*{message}"):
        id_key(bad, source="users.csv", row=4)
    with pytest.raises(IdError, match=f"ids: row 1: .*{message}"):
        id_keys(["ok", bad])


def test_psi_normalisation_is_the_same_rule() -> None:
    values = ["a", 7, np.int64(8), "007"]
    assert [normalize_id(v, row) for row, v in enumerate(values)] == id_keys(values)
    with pytest.raises(IdError, match="row 2"):
        normalize_id(2.5, 2)


def test_to_inner_by_key_matches_ints_and_their_text() -> None:
    m = IdMap([10, 11, 12], kind="user")
    assert m.to_inner(["11", 12, np.int64(10), "010"], unknown="mask", match="key").tolist() == [1, 2, 0, -1]
    assert m.to_inner(["11"], unknown="mask").tolist() == [-1]  # exact: "11" is not 11
    many = [str(x) for x in range(5, 30)]  # the vectorised path (more than 16 ids)
    assert m.to_inner(many, unknown="mask", match="key")[5:8].tolist() == [0, 1, 2]
    with pytest.raises(UnknownIdError, match="'13'"):
        m.to_inner(["13"], match="key")


def test_to_inner_by_key_refuses_floats() -> None:
    with pytest.raises(IdError, match="user ids: row 0: id 11.0 of type float"):
        IdMap([10, 11], kind="user").to_inner([11.0], match="key")


def test_a_map_whose_ids_collide_by_key_cannot_match_by_key() -> None:
    m = IdMap([7, "7", "x"], kind="user")  # distinct raw values, the same id across parties
    assert m.to_inner([7, "7"]).tolist() == [0, 1]
    with pytest.raises(IdError, match=r"user id map: raw ids \[7, '7'\] are the same id \(key '7'\)"):
        m.to_inner(["x"], match="key")
