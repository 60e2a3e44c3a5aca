"""Conversion data in the vertical FM's shape: the TalkingData reader (hand-made files; the real file under
``data``), its errors, and the advertiser/platform splits of TalkingData and of the synthetic funnel."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.data import SyntheticData, generate, load_talkingdata, synthetic_ads_split, talkingdata_split
from fedrec.data.schema import DataValidationError

HEADER = "ip,app,device,os,channel,click_time,attributed_time,is_attributed"
ROWS = [
    "87540,12,1,13,497,2017-11-07 09:30:38,,0",
    "105560,25,1,17,259,2017-11-07 13:40:27,,0",
    "5314,19,0,24,213,2017-11-08 02:22:38,2017-11-08 02:22:40,1",
    "87540,3,2,13,115,2017-11-09 15:59:51,,0",
]


def write_log(tmp_path: Path, rows: list[str], header: str = HEADER) -> Path:
    path = tmp_path / "train_sample.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def synthetic() -> SyntheticData:
    return generate(n_users=300, impressions_per_user=20.0, seed=3)


# --- reader ----------------------------------------------------------------------------------------------

def test_load_talkingdata_types_and_click_ids(tmp_path: Path) -> None:
    clicks = load_talkingdata(write_log(tmp_path, ROWS))
    assert clicks.index.name == "click_id" and clicks.index.tolist() == [1, 2, 3, 4]
    assert clicks.dtypes.to_dict() == {"ip": "int64", "app": "int64", "device": "int64", "os": "int64",
                                       "channel": "int64", "click_time": "int64", "attributed_time": "Int64",
                                       "is_attributed": "int64"}
    assert clicks.loc[1, "click_time"] == 1510047038  # 2017-11-07 09:30:38 UTC
    assert int(clicks.loc[3, "attributed_time"]) - int(clicks.loc[3, "click_time"]) == 2
    assert clicks["attributed_time"].isna().tolist() == [True, True, False, True]
    assert clicks["is_attributed"].tolist() == [0, 0, 1, 0]


@pytest.mark.parametrize(("line", "row", "column", "reason"), [
    (3, "105560,25,1,17,259,2017-11-07 13:40:27,,2", "is_attributed", "label_invalid"),
    (4, "5314,19,0,24,213,07/11/2017 02:22,2017-11-08 02:22:40,1", "click_time", "timestamp_unparsable"),
    (2, "8754x,12,1,13,497,2017-11-07 09:30:38,,0", "ip", "code_not_integer"),
    (5, "87540,-3,2,13,115,2017-11-09 15:59:51,,0", "app", "code_not_integer"),
    (4, "5314,19,0,24,213,2017-11-08 02:22:38,,1", "attributed_time", "attributed_time_inconsistent"),
    (2, "87540,12,1,13,497,2017-11-07 09:30:38,2017-11-07 10:00:00,0", "attributed_time",
     "attributed_time_inconsistent"),
])
def test_malformed_row_names_line_and_column(tmp_path: Path, line: int, row: str, column: str,
                                             reason: str) -> None:
    rows = list(ROWS)
    rows[line - 2] = row  # line 1 is the header
    path = write_log(tmp_path, rows)
    with pytest.raises(DataValidationError) as ei:
        load_talkingdata(path)
    err = ei.value
    assert (err.row, err.column, err.reason) == (line, column, reason)
    assert f"{path}, line {line}, column {column!r}" in str(err)


def test_wrong_field_count_names_the_line(tmp_path: Path) -> None:
    rows = list(ROWS)
    rows[2] = "5314,19,0,24,213,2017-11-08 02:22:38,1"
    with pytest.raises(DataValidationError, match=r"line 4: .*8 fields") as ei:
        load_talkingdata(write_log(tmp_path, rows))
    assert ei.value.reason == "malformed_line"


def test_missing_column_is_named(tmp_path: Path) -> None:
    path = write_log(tmp_path, [r.rsplit(",", 1)[0] for r in ROWS], header=HEADER.rsplit(",", 1)[0])
    with pytest.raises(DataValidationError, match="missing column.*is_attributed") as ei:
        load_talkingdata(path)
    assert ei.value.column == "is_attributed"


def test_skip_drops_bad_rows_and_keeps_click_ids(tmp_path: Path) -> None:
    rows = list(ROWS)
    rows[1] = "105560,25,1,17,259,2017-11-07 13:40:27,,yes"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clicks = load_talkingdata(write_log(tmp_path, rows), errors="skip")
    assert clicks.index.tolist() == [1, 3, 4]
    assert clicks.attrs["validation"]["dropped"] == {"label_invalid": 1}


# --- TalkingData split -------------------------------------------------------------------------------------

def test_talkingdata_split_guest_has_labels_host_has_platform_columns(tmp_path: Path) -> None:
    guest, host = talkingdata_split(load_talkingdata(write_log(tmp_path, ROWS)))
    g = guest.interactions
    assert list(g.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert g["user_id"].tolist() == [1, 2, 3, 4] and g["item_id"].tolist() == [12, 25, 19, 3]
    assert g["rating"].tolist() == [0.0, 0.0, 1.0, 0.0] and g["timestamp"].dtype == np.int64
    assert guest.item_features is None and guest.rating_scale == (0.0, 1.0)
    uf = host.user_features
    assert list(uf.columns) == ["ip", "device", "os", "channel"]  # app stays with the advertiser
    assert uf.index.name == "user_id" and uf.index.tolist() == [1, 2, 3, 4]
    assert all(pd.api.types.is_string_dtype(uf[c]) for c in uf.columns)  # categorical for the FM
    assert uf.loc[4, "ip"] == "87540"


def test_talkingdata_split_rejects_other_host_columns(tmp_path: Path) -> None:
    clicks = load_talkingdata(write_log(tmp_path, ROWS))
    with pytest.raises(ValueError, match="host_columns"):
        talkingdata_split(clicks, host_columns=["ip", "app"])


# --- synthetic split ----------------------------------------------------------------------------------------

def test_synthetic_split_is_the_clicks(synthetic: SyntheticData) -> None:
    guest, host = synthetic_ads_split(synthetic)
    ads = synthetic.ads
    clicks = ads[ads["click"] == 1]
    g = guest.interactions
    assert len(g) == len(clicks) > 0
    assert g["user_id"].tolist() == clicks["impression_id"].tolist()
    assert g["item_id"].tolist() == clicks["campaign_id"].tolist()
    assert g["rating"].tolist() == clicks["conversion"].astype(float).tolist()
    assert guest.item_features is not None and set(g["item_id"]) <= set(guest.item_features.index)
    assert host.user_features.index.tolist() == g["user_id"].tolist()


def test_synthetic_split_host_columns(synthetic: SyntheticData) -> None:
    _, host = synthetic_ads_split(synthetic)
    uf = host.user_features
    users = synthetic.dataset.user_features
    assert list(uf.columns) == ["placement", "hour", "platform_user", *users.columns]
    assert all(pd.api.types.is_string_dtype(uf[c]) for c in ("placement", "hour", "platform_user"))
    ads = synthetic.ads.set_index("impression_id")
    first = uf.index[0]
    assert uf.loc[first, "platform_user"] == f"u{ads.loc[first, 'user_id']}"
    assert uf.loc[first, "age"] == users.loc[ads.loc[first, "user_id"], "age"]
    _, without = synthetic_ads_split(synthetic, platform_user=False)
    assert "platform_user" not in without.user_features.columns


def test_synthetic_split_trains_the_vertical_fm_directly(synthetic: SyntheticData) -> None:
    from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
    from fedrec.transport import MemoryNetwork, run_parties

    guest_view, host_view = synthetic_ads_split(synthetic)
    cfg = HeteroFMConfig(label_dp="off", objective="logistic", n_factors=2, epochs=1, batch_size=256,
                         backend="plain",
                         validation="none", use_user_id=False, use_history=False, use_history_length=False)
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)

    def play() -> np.ndarray:
        guest.fit(guest_view.interactions, item_features=guest_view.item_features)
        p = guest.predict(guest_view.interactions)
        guest.close()
        return p

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = run_parties({"guest": play, "host": lambda: host.serve(host_view.user_features)}, timeout=120)
    p = np.asarray(out["guest"], dtype=np.float64)
    assert p.shape == (len(guest_view.interactions),) and ((p > 0) & (p < 1)).all()
    assert guest.last_fallbacks.get("no_host_partial", 0) == 0


# --- the real file ------------------------------------------------------------------------------------------

@pytest.mark.data
def test_real_talkingdata_split(shared_data_dir: Path) -> None:
    clicks = load_talkingdata(shared_data_dir / "ads" / "talkingdata" / "train_sample.csv")
    assert len(clicks) == 100_000 and int(clicks["is_attributed"].sum()) == 227
    assert int(clicks["attributed_time"].notna().sum()) == 227
    guest, host = talkingdata_split(clicks)
    assert guest.interactions["user_id"].tolist() == list(range(1, 100_001))
    assert float(guest.interactions["rating"].sum()) == 227.0
    assert guest.interactions["item_id"].nunique() == 161
    assert host.user_features["ip"].nunique() == 34_857 and len(host.user_features) == 100_000
