"""Click logs for advertising: readers and their errors (file, line, column), the typed ClickLog, last-click
attribution within a window (known answers; the synthetic funnel's delayed conversions linked back), the
delay cut (recent clicks are not negatives) and the advertiser / platform views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.ads import (
    ClickLog,
    attribute,
    observable_labels,
    read_ali_ccp,
    read_click_log,
    read_conversions,
    read_talkingdata,
    synthetic_funnel,
    vertical_views,
)
from fedrec.ads.data import TIME_DTYPE
from fedrec.ads.platform_model import PlatformLogit
from fedrec.data import SyntheticData, generate, load_talkingdata, talkingdata_split
from fedrec.data.schema import DataValidationError
from fedrec.eval.metrics import auc

HEADER = "click_id,user_id,time,campaign,converted,conversion_time,channel,device"
ROWS = [
    "1,u1,2024-03-01T10:00:00Z,c1,0,,ch1,ios",
    "2,u1,2024-03-01T11:00:00Z,c1,1,2024-03-02T09:00:00Z,ch2,ios",
    "3,u2,1709290800,c2,0,,ch1,android",
    "4,u3,2024-03-01 12:30:00,c1,0,,ch3,android",
]


def write(tmp_path: Path, rows: list[str], header: str = HEADER, name: str = "clicks.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def synthetic() -> SyntheticData:
    return generate(n_users=1500, impressions_per_user=20.0, seed=5)


def t(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


# --- the generic reader ----------------------------------------------------------------------------------

def test_read_click_log_types_and_values(tmp_path: Path) -> None:
    log = read_click_log(write(tmp_path, ROWS))
    f = log.frame
    assert f.index.name == "click_id" and f.index.tolist() == [1, 2, 3, 4]
    assert str(f["time"].dtype) == TIME_DTYPE and str(f["conversion_time"].dtype) == TIME_DTYPE
    assert f.loc[3, "time"] == t("2024-03-01 11:00:00")  # Unix seconds 1709290800
    assert f.loc[4, "time"] == t("2024-03-01 12:30:00")  # a zone-less time is UTC
    assert f["converted"].tolist() == [0, 1, 0, 0]
    assert f["conversion_time"].isna().tolist() == [True, False, True, True]
    assert log.platform_columns == ("channel", "device") and log.labels == "source"
    assert log.n_clicks == 4 and log.n_conversions == 1 and log.timed


@pytest.mark.parametrize(("line", "row", "column", "reason"), [
    (3, "2,u1,2024-03-01T11:00:00Z,c1,1,2024-03-02T09:00:00Z,ch2", None, "malformed_line"),  # ragged
    (4, "3,u2,1709290800,c2,0,,NaN,android", "channel", "value_missing"),
    (5, "4,u3,2024-13-01 12:30:00,c1,0,,ch3,android", "time", "timestamp_unparsable"),
    (5, "3,u3,2024-03-01 12:30:00,c1,0,,ch3,android", "click_id", "duplicate_id"),
    (2, "1,u1,2024-03-01T10:00:00Z,c1,nan,,ch1,ios", "converted", "label_invalid"),
    (3, "2,u1,2024-03-01T11:00:00Z,c1,1,2024-03-01T10:00:00Z,ch2,ios", "conversion_time",
     "conversion_time_inconsistent"),
    (2, "1,u1,2024-03-01T10:00:00Z,c1,0,2024-03-02T09:00:00Z,ch1,ios", "conversion_time",
     "conversion_time_inconsistent"),
    (4, "x3,u2,1709290800,c2,0,,ch1,android", "click_id", "id_not_integer"),
    (3, "2,,2024-03-01T11:00:00Z,c1,1,2024-03-02T09:00:00Z,ch2,ios", "user_id", "value_missing"),
])
def test_malformed_click_log_names_file_line_column(tmp_path: Path, line: int, row: str, column: str | None,
                                                    reason: str) -> None:
    rows = list(ROWS)
    rows[line - 2] = row  # line 1 is the header
    path = write(tmp_path, rows)
    with pytest.raises(DataValidationError) as ei:
        read_click_log(path)
    err = ei.value
    assert (err.row, err.column, err.reason) == (line, column, reason)
    assert str(err).startswith(f"{path}, line {line}")


def test_skip_drops_bad_rows_with_a_report(tmp_path: Path) -> None:
    rows = [*ROWS, "4,u9,2024-03-01,c1,0,,ch1,ios", "5,u9,not a time,c1,0,,ch1,ios"]
    log = read_click_log(write(tmp_path, rows), errors="skip")
    assert log.frame.index.tolist() == [1, 2, 3, 4]
    assert log.meta["validation"]["dropped"] == {"timestamp_unparsable": 1, "duplicate_id": 1}


def test_numeric_dimension_must_be_finite(tmp_path: Path) -> None:
    rows = [r + ",0.5" for r in ROWS]
    rows[1] = rows[1][:-3] + "inf"
    with pytest.raises(DataValidationError) as ei:
        read_click_log(write(tmp_path, rows, HEADER + ",score"), numeric=["score"])
    assert (ei.value.row, ei.value.column, ei.value.reason) == (3, "score", "value_not_finite")


def test_log_without_labels_and_conversion_events(tmp_path: Path) -> None:
    path = write(tmp_path, [",".join(r.split(",")[:4] + r.split(",")[6:]) for r in ROWS],
                 "click_id,user_id,time,campaign,channel,device")
    log = read_click_log(path)
    assert log.labels == "none" and log.n_conversions == 0
    conv = read_conversions(write(tmp_path, ["7,u1,c1,2024-03-02T09:00:00Z,120.5", "8,u2,c2,1709377200,"],
                                  "conversion_id,user_id,campaign,time,value", "conv.csv"), errors="skip")
    assert conv.index.tolist() == [7] and conv.loc[7, "value"] == 120.5  # the empty value is refused
    with pytest.raises(DataValidationError) as ei:
        read_conversions(write(tmp_path, ["7,u1,c1,yesterday"], "conversion_id,user_id,campaign,time",
                               "c.csv"))
    assert (ei.value.row, ei.value.column, ei.value.reason) == (2, "time", "timestamp_unparsable")


def test_in_memory_click_log_is_checked() -> None:
    frame = pd.DataFrame({"user_id": ["a", "b"],
                          "time": pd.to_datetime(["2024-01-01", "2024-01-02"], utc=True),
                          "campaign": ["c", "c"], "converted": np.array([0, 1], np.int8),
                          "conversion_time": pd.to_datetime([None, "2024-01-03"], utc=True)},
                         index=pd.Index([7, 7], name="click_id"))
    frame["time"] = frame["time"].astype(TIME_DTYPE)
    frame["conversion_time"] = frame["conversion_time"].astype(TIME_DTYPE)
    with pytest.raises(DataValidationError) as ei:
        ClickLog(frame, "mem")
    assert (ei.value.row, ei.value.column, ei.value.reason) == (7, "click_id", "duplicate_id")
    frame.index = pd.Index([7, 8], name="click_id")
    frame["channel"] = ["x", np.nan]
    with pytest.raises(DataValidationError, match=r"mem, row \(index\) 8, column 'channel'"):
        ClickLog(frame, "mem", platform_columns=("channel",))


# --- real formats ----------------------------------------------------------------------------------------

TD_HEADER = "ip,app,device,os,channel,click_time,attributed_time,is_attributed"


def test_talkingdata_click_log_keeps_the_source_label_and_adds_the_hour(tmp_path: Path) -> None:
    path = write(tmp_path, ["87540,12,1,13,497,2017-11-07 09:30:38,,0",
                            "5314,19,0,24,213,2017-11-08 02:22:38,2017-11-08 02:22:40,1"], TD_HEADER)
    log = read_talkingdata(path)
    assert log.platform_columns == ("ip", "device", "os", "channel", "hour")
    assert log.frame["hour"].tolist() == ["h09", "h02"] and log.frame["campaign"].tolist() == ["12", "19"]
    assert log.frame["user_id"].tolist() == ["87540", "5314"]
    assert log.frame.loc[2, "conversion_time"] - log.frame.loc[2, "time"] == pd.Timedelta(seconds=2)
    guest, host = vertical_views(log)
    g0, h0 = talkingdata_split(load_talkingdata(path))
    pd.testing.assert_frame_equal(guest.interactions, g0.interactions)
    pd.testing.assert_frame_equal(host.user_features.drop(columns="hour"), h0.user_features)


def test_talkingdata_download_before_click_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, ["87540,12,1,13,497,2017-11-07 09:30:38,,0",
                            "5314,19,0,24,213,2017-11-08 02:22:38,2017-11-08 02:20:00,1"], TD_HEADER)
    with pytest.raises(DataValidationError) as ei:
        read_talkingdata(path)
    err = ei.value
    assert (err.row, err.column, err.reason) == (3, "attributed_time", "attributed_before_click")
    assert read_talkingdata(path, errors="skip").frame.index.tolist() == [1]


ALI_HEADER = ("click,purchase,101,121,122,124,125,126,127,128,129,205,206,207,210,216,508,509,702,853,301,"
              "109_14,110_14,127_14,150_14,D109_14,D110_14,D127_14,D150_14,D508,D509,D702,D853")
ALI_ROW = "{c},{p},1,1,1,1,1,0,1,1,1,{item},3,3,3,2,2,0,1,1,1,1,1,1,1,0.47,0.56,0.08,0.19,{d},0.25,0.46,0.34"


def test_ali_ccp_keeps_the_clicks_and_checks_the_fields(tmp_path: Path) -> None:
    rows = [ALI_ROW.format(c=0, p=0, item=1, d=0.1), ALI_ROW.format(c=1, p=1, item=2, d=0.5),
            ALI_ROW.format(c=1, p=0, item=3, d=0.0)]
    log = read_ali_ccp(write(tmp_path, rows, ALI_HEADER))
    assert log.frame.index.tolist() == [2, 3] and log.frame["converted"].tolist() == [1, 0]
    assert log.frame["campaign"].tolist() == ["2", "3"] and not log.timed and log.meta["impressions"] == 3
    assert log.frame["D508"].dtype == np.float64 and log.advertiser_columns == ("206", "207", "210", "216")
    cases = [(ALI_ROW.format(c=0, p=1, item=2, d=0.5), "purchase", "purchase_without_click"),
             (ALI_ROW.format(c=1, p=0, item=2, d="NaN"), "D508", "value_not_finite"),
             (ALI_ROW.format(c=1, p=0, item="x", d=0.5), "205", "code_not_integer")]
    for bad, column, reason in cases:
        with pytest.raises(DataValidationError) as ei:
            read_ali_ccp(write(tmp_path, [rows[0], bad], ALI_HEADER))
        assert (ei.value.row, ei.value.column, ei.value.reason) == (3, column, reason)
    with pytest.raises(ValueError, match="no click times"):
        observable_labels(log, "2024-01-01", window="7D")


@pytest.mark.data
def test_real_logs(shared_data_dir: Path) -> None:
    log = read_talkingdata(shared_data_dir / "ads" / "talkingdata" / "train_sample.csv")
    assert (log.n_clicks, log.n_conversions) == (100_000, 227)
    assert (log.frame["conversion_time"] >= log.frame["time"]).sum() == 227
    ali = read_ali_ccp(shared_data_dir / "ads" / "ali_ccp_tiny" / "ali_ccp_train_sample.csv")
    assert (ali.n_clicks, ali.n_conversions, ali.meta["impressions"]) == (7, 1, 100)


# --- attribution -----------------------------------------------------------------------------------------

def _clicks(tmp_path: Path) -> ClickLog:
    rows = ["1,u1,2024-03-01T00:00:00Z,c1,ch1,ios", "2,u1,2024-03-03T00:00:00Z,c1,ch1,ios",
            "3,u1,2024-03-04T00:00:00Z,c2,ch2,ios", "4,u2,2024-03-01T00:00:00Z,c1,ch1,and",
            "5,u3,2024-03-01T00:00:00Z,c1,ch1,and"]
    return read_click_log(write(tmp_path, rows, "click_id,user_id,time,campaign,channel,device"))


def _events(*rows: tuple[str, str, str]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [r[0] for r in rows], "campaign": [r[1] for r in rows],
                         "time": pd.to_datetime([r[2] for r in rows], utc=True, format="ISO8601")})


def test_last_click_of_the_user_and_campaign_within_the_window(tmp_path: Path) -> None:
    clicks = _clicks(tmp_path)
    events = _events(("u1", "c1", "2024-03-05"),   # last c1 click of u1: 2 (not 3: other campaign)
                     ("u2", "c1", "2024-03-08"),   # 7 days after click 4: exactly the window
                     ("u3", "c1", "2024-03-08 00:00:01"),  # one second beyond
                     ("u1", "c1", "2024-02-28"),   # before any click
                     ("u1", "c1", "2024-03-06"))   # a second conversion of click 2
    log, rep = attribute(clicks, events, window="7D")
    f = log.frame
    assert f["converted"].tolist() == [0, 1, 0, 1, 0]
    assert f["n_conversions"].tolist() == [0, 2, 0, 1, 0]
    assert f.loc[2, "conversion_time"] == t("2024-03-05") and f.loc[4, "conversion_time"] == t("2024-03-08")
    assert (rep.conversions, rep.attributed, rep.unattributed, rep.converted_clicks,
            rep.clicks_with_several) == (5, 3, 2, 2, 1)
    assert log.labels == "attributed" and log.window_seconds == 7 * 86_400


def test_attribution_across_campaigns_and_shorter_window(tmp_path: Path) -> None:
    clicks = _clicks(tmp_path)
    events = _events(("u1", "c1", "2024-03-05"))
    by_user, _ = attribute(clicks, events, window="7D", by=("user_id",))
    assert by_user.frame["converted"].tolist() == [0, 0, 1, 0, 0]  # click 3 (campaign c2) is the last one
    short, rep = attribute(clicks, events, window=86_400)
    assert short.frame["converted"].sum() == 0 and rep.unattributed == 1  # 2 days after click 2


def test_synthetic_conversions_are_separate_delayed_events_linked_back(synthetic: SyntheticData) -> None:
    clicks, events = synthetic_funnel(synthetic)
    assert clicks.labels == "none" and clicks.n_conversions == 0 and set(events.columns) == {
        "user_id", "campaign", "time", "value"}
    truth = synthetic.ads.set_index("impression_id").loc[clicks.frame.index, "conversion"].to_numpy()
    assert len(events) == truth.sum() and events["time"].is_monotonic_increasing
    wide, rep = attribute(clicks, events, window="60D")
    assert rep.attributed == len(events)  # every conversion follows its click within 60 days
    # last-click: a conversion goes to a later click of the same user and campaign if there is one
    assert np.mean(wide.frame["converted"].to_numpy() == truth) > 0.995
    week, _ = attribute(clicks, events, window="7D")
    day, _ = attribute(clicks, events, window="1D")
    assert day.n_conversions < week.n_conversions <= wide.n_conversions  # the delay has a long tail
    organic_clicks, organic = synthetic_funnel(synthetic, organic_per_click=0.5, seed=1)
    _, rep = attribute(organic_clicks, organic, window="7D")
    assert rep.unattributed > 0.4 * len(clicks.frame)  # organic conversions have no click behind them


# --- delay -----------------------------------------------------------------------------------------------

def _labelled(tmp_path: Path) -> ClickLog:
    rows = ["1,u1,2024-03-01,c1,0,,ch1", "2,u2,2024-03-01,c1,1,2024-03-02,ch1",
            "3,u3,2024-03-08,c1,0,,ch1", "4,u4,2024-03-08,c1,1,2024-03-09,ch1",
            "5,u5,2024-03-08,c1,1,2024-03-11,ch1", "6,u6,2024-03-11,c1,0,,ch1"]
    header = "click_id,user_id,time,campaign,converted,conversion_time,ch"
    return read_click_log(write(tmp_path, rows, header))


def test_recent_clicks_are_not_negatives(tmp_path: Path) -> None:
    log = _labelled(tmp_path)
    cut = "2024-03-10"  # window 7 days: clicks after 03-03 are recent
    dropped, rep = observable_labels(log, cut, window="7D")
    assert dropped.frame.index.tolist() == [1, 2] and dropped.frame["converted"].tolist() == [0, 1]
    assert (rep.after_cutoff, rep.recent_excluded, rep.converted_after_cutoff) == (1, 3, 1)
    kept, rep = observable_labels(log, cut, window="7D", recent="keep_positives")
    # click 4 converted before the cut: a positive; click 3 (not yet) and 5 (converts after the cut) are not
    # negatives: excluded
    assert kept.frame.index.tolist() == [1, 2, 4] and kept.frame["converted"].tolist() == [0, 1, 1]
    assert (rep.recent_excluded, rep.recent_positives_kept) == (2, 1)
    assert kept.cutoff == t(cut) and kept.window_seconds == 7 * 86_400


def test_delay_cut_needs_a_window(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pass window="):
        observable_labels(_labelled(tmp_path), "2024-03-10")


def test_delay_cut_on_the_synthetic_funnel_leaves_only_final_labels(synthetic: SyntheticData) -> None:
    clicks, events = synthetic_funnel(synthetic)
    log, _ = attribute(clicks, events, window="7D")
    cut = log.frame["time"].max() - pd.Timedelta(days=60)
    train, rep = observable_labels(log, cut)
    assert train.frame["time"].max() <= cut - pd.Timedelta(days=7)
    # the kept clicks had their whole window before the cut: their labels equal the final ones
    assert (train.frame["converted"] == log.frame.loc[train.frame.index, "converted"]).all()
    assert rep.kept + rep.recent_excluded + rep.after_cutoff == rep.clicks_in


# --- views and the synthetic funnel's platform signal ----------------------------------------------------

def test_synthetic_views(synthetic: SyntheticData) -> None:
    clicks, events = synthetic_funnel(synthetic)
    log, _ = attribute(clicks, events, window="30D")
    guest, host = vertical_views(log)
    assert guest.interactions["user_id"].tolist() == log.frame.index.tolist()
    assert guest.interactions["rating"].sum() == log.n_conversions
    assert guest.item_features is not None and list(guest.item_features.columns) == ["campaign_category"]
    assert list(host.user_features.columns) == list(log.platform_columns)
    assert "platform_user" in host.user_features.columns and "converted" not in host.user_features.columns
    with pytest.raises(ValueError, match="attribute conversions first"):
        vertical_views(clicks)


def test_synthetic_platform_features_carry_signal_the_advertiser_lacks() -> None:
    data = generate(n_users=3000, impressions_per_user=30.0, seed=2)
    clicks, events = synthetic_funnel(data)
    log, _ = attribute(clicks, events, window="30D")
    f, y = log.frame, log.frame["converted"].to_numpy()
    test = np.random.default_rng(0).random(len(f)) < 0.3
    cats = [c for c in log.platform_columns if f[c].dtype != np.float64]
    nums = [c for c in log.platform_columns if f[c].dtype == np.float64]
    adv = PlatformLogit(["campaign"]).fit(f[~test], y[~test]).predict_proba(f[test])
    both = PlatformLogit(["campaign", *cats], nums).fit(f[~test], y[~test]).predict_proba(f[test])
    assert auc(y[test], both) - auc(y[test], adv) > 0.04
