"""The guest-side guard (fedrec.models.guard, training.guard_job): alpha on the validation rows, the blend
as one factor model in the library and in serving bundles, bad inputs refused naming file and field, and
the host's transcript unchanged by it (in-memory parties, plain backend)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedrec.artifacts import ArtifactError
from fedrec.data import SyntheticConfig, generate, vertical_split
from fedrec.models import FactorizationMachine
from fedrec.models.guard import (
    GUARD_FILE,
    GuardChoice,
    blend_factors,
    choose_alpha,
    read_guard,
    scale_partials,
)
from fedrec.models.vertical import HostPartials, VerticalFM
from serving.artifacts import load_bundle, random_bundle
from serving.export import bundle_from_model, fm_host_partials, guarded_bundle
from serving.scorer import Scorer

pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")


def _identity(z: np.ndarray) -> np.ndarray:
    return z


# ---------------------------------------------------------------------------------- choosing alpha
def test_blend_recovers_the_mixing_weight_of_a_known_answer() -> None:
    rng = np.random.default_rng(0)
    zb, zf = rng.standard_normal(400), rng.standard_normal(400)
    y = 0.3 * zb + 0.7 * zf
    c = choose_alpha(y, zb, zf, objective="regression", finish=_identity)
    assert c.alpha == pytest.approx(0.7, abs=1e-9) and c.status == "chosen" and c.n_rows == 400
    assert c.blended == pytest.approx(0.0, abs=1e-9) and c.blended < min(c.bank_alone, c.federated)


@pytest.mark.parametrize(("truth", "alpha"), [("bank", 0.0), ("federated", 1.0)])
def test_blend_keeps_the_better_model_when_the_other_is_noise(truth: str, alpha: float) -> None:
    rng = np.random.default_rng(1)
    zb, zf = rng.standard_normal(300), rng.standard_normal(300)
    y = zb if truth == "bank" else zf
    for mode in ("blend", "choose"):
        c = choose_alpha(y, zb, zf, objective="regression", finish=_identity, mode=mode)
        assert c.alpha == alpha and c.blended == pytest.approx(0.0, abs=1e-12)


def test_choose_takes_one_of_the_two_and_off_keeps_the_federated_model() -> None:
    rng = np.random.default_rng(2)
    zb, zf = rng.standard_normal(200), rng.standard_normal(200)
    y = 0.5 * zb + 0.5 * zf
    choose = choose_alpha(y, zb, zf, objective="regression", finish=_identity, mode="choose")
    assert choose.alpha in (0.0, 1.0)
    off = choose_alpha(y, zb, zf, objective="regression", finish=_identity, mode="off")
    assert off.alpha == 1.0 and off.status == "off"


def test_logistic_blend_is_never_worse_than_either_model() -> None:
    rng = np.random.default_rng(3)
    signal = rng.standard_normal(500)
    y = (rng.random(500) < 1 / (1 + np.exp(-signal))).astype(float)
    zb, zf = signal + rng.standard_normal(500), 0.5 * signal + rng.standard_normal(500)
    c = choose_alpha(y, zb, zf, objective="logistic", finish=_identity)
    assert c.metric == "log_loss" and 0.0 < c.alpha < 1.0
    assert c.blended <= min(c.bank_alone, c.federated)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "mix"}, "mode must be one of"),
    ({"y": np.zeros(3)}, "must be of one length"),
    ({"y": np.zeros(0), "zb": np.zeros(0), "zf": np.zeros(0)}, "no validation rows"),
    ({"zf": np.array([0.0, np.nan, 0.0, 0.0])}, "non-finite"),
])
def test_bad_guard_inputs_are_refused(kwargs: dict[str, Any], message: str) -> None:
    args = {"y": np.zeros(4), "zb": np.zeros(4), "zf": np.ones(4), "mode": "blend", **kwargs}
    with pytest.raises(ValueError, match=message):
        choose_alpha(args["y"], args["zb"], args["zf"], objective="regression", finish=_identity,
                     mode=args["mode"])


def test_alpha_outside_zero_one_is_refused_naming_file_and_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="field 'alpha' must be a number in \\[0, 1\\], got 1.5"):
        GuardChoice("blend", 1.5, "chosen", "validation")
    doc = GuardChoice("blend", 0.5, "chosen", "validation").to_json()
    (tmp_path / GUARD_FILE).write_text(json.dumps({**doc, "alpha": -0.1}))
    with pytest.raises(ArtifactError, match=rf"{GUARD_FILE}.*field 'alpha' must be a number in \[0, 1\]"):
        read_guard(tmp_path)


def test_no_validation_rows_keep_the_federated_model_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    from fedrec.protocols.hetero_fm import HeteroFMConfig
    from training import guard_job

    cfg = SimpleNamespace(guard=SimpleNamespace(mode="blend"), ads=SimpleNamespace(refit="off"),
                          data=SimpleNamespace(validation=None))
    with caplog.at_level(logging.WARNING):
        g = guard_job.start(cfg, HeteroFMConfig(validation="none", backend="plain"), None, None, None)
    assert g.status == "no_validation" and g.bank is None
    assert "NOT checked against the bank alone" in caplog.text and 'validation = "random"' in caplog.text
    choice, bank = guard_job.finish(g, SimpleNamespace(run_id="r1"))
    assert choice.alpha == 1.0 and choice.status == "no_validation" and bank is None


# ---------------------------------------------------------------------------------- one factor model
@pytest.fixture(scope="module")
def models() -> tuple[FactorizationMachine, FactorizationMachine, Any]:
    """A full FM (the "federated" model: guest half + host partials) and the bank alone on the same rows."""
    ds = generate(n_users=60, n_items=25, seed=4).dataset
    common = {"n_factors": 3, "epochs": 2, "validation": "none", "clip": False}
    full = FactorizationMachine(**common).fit(ds)
    bank = FactorizationMachine(**{**common, "n_factors": 2}, use_user_features=False).fit(ds)
    return full, bank, ds


def test_blend_factors_is_the_blend_of_the_scores() -> None:
    rng = np.random.default_rng(5)
    n = rng.standard_normal
    f = (n(4), n((4, 3)), n(6), n((6, 3)))
    b = (n(4), n((4, 2)), n(6), n((6, 2)))

    def scores(m: tuple[np.ndarray, ...]) -> np.ndarray:
        return m[0][:, None] + m[2][None, :] + m[1] @ m[3].T

    a = 0.35
    assert scores(blend_factors(a, f, b)) == pytest.approx((1 - a) * scores(b) + a * scores(f), abs=1e-12)
    assert blend_factors(1.0, f, b)[1].shape == (4, 3)  # alpha = 1: the federated model as it is


@pytest.mark.parametrize("with_partials", [True, False])
def test_guarded_bundle_ranks_by_the_guarded_model(models: tuple[Any, ...], with_partials: bool) -> None:
    """Serving a guarded bundle (host_scale = alpha) gives the library's guarded scores to float32
    precision, with the host partials joined and without them (guest-only fallback)."""
    full, bank, _ = models
    alpha = 0.4
    users = list(full.user_map.raw_ids[:25])
    hp = HostPartials.from_frame(fm_host_partials(full, users), full.config.n_factors)
    none = HostPartials(np.asarray(users, dtype=object), np.zeros(len(users)), np.zeros((len(users), 3)),
                        np.zeros(len(users), bool))
    lib = VerticalFM(full, hp if with_partials else none, guard=(alpha, bank))
    bundle = guarded_bundle(bundle_from_model(full, vertical=True), bank, alpha)
    assert bundle.host_scale == alpha and bundle.host_factors == 3 and bundle.n_factors == 5
    rec = Scorer(bundle, hp if with_partials else None).recommend(users, 6)
    # the library's guarded score of every (user, item), the seen items masked, ranked: the bundle's top 6
    items = list(full.item_map.raw_ids)
    pairs = pd.DataFrame({"user_id": np.repeat(users, len(items)), "item_id": items * len(users)})
    want = lib.decision_function(pairs).reshape(len(users), len(items))
    fed = VerticalFM(full, hp if with_partials else none).decision_function(pairs)
    assert want.ravel() == pytest.approx((1 - alpha) * bank.decision_function(pairs) + alpha * fed, abs=1e-9)
    seen = full.seen
    for r, u in enumerate(users):
        inner = full.user_map.to_inner([u])[0]
        want[r, seen.indices[seen.indptr[inner]:seen.indptr[inner + 1]]] = -np.inf
    top = -np.sort(-want, axis=1)[:, :6]
    assert rec.scores == pytest.approx(top, rel=1e-5, abs=1e-5)  # float32 serving, float64 library
    got = want[np.arange(len(users))[:, None], full.item_map.to_inner(rec.item_ids.ravel()).reshape(-1, 6)]
    assert got == pytest.approx(top, rel=1e-5, abs=1e-5)


def test_guarded_bundle_with_two_hosts_ranks_by_the_guarded_model(models: tuple[Any, ...]) -> None:
    """Two hosts' partials (joined with their host-host term) enter the guarded bundle scaled as one."""
    full, bank, _ = models
    alpha, users = 0.7, list(full.user_map.raw_ids[:12])
    rng = np.random.default_rng(8)
    ids = np.asarray(users, dtype=object)
    hosts = {h: HostPartials(ids, rng.normal(0, 0.3, 12), rng.normal(0, 0.3, (12, 3)), rng.random(12) < 0.8,
                             source=f"<{h}>") for h in ("h1", "h2")}
    lib = VerticalFM(full, hosts, guard=(alpha, bank))
    rec = Scorer(guarded_bundle(bundle_from_model(full, vertical=True), bank, alpha), hosts).recommend(
        users, 4, filter_seen=False)
    items = list(full.item_map.raw_ids)
    pairs = pd.DataFrame({"user_id": np.repeat(users, len(items)), "item_id": items * len(users)})
    want = -np.sort(-lib.decision_function(pairs).reshape(len(users), len(items)), axis=1)[:, :4]
    assert rec.scores == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_scale_partials_adds_alpha_times_the_host_terms() -> None:
    z, e = scale_partials(np.array([2.0]), np.array([[1.0, 4.0]]), 0.25, 3)
    assert z.tolist() == [0.5] and e.tolist() == [[0.5, 2.0, 0.0]]
    with pytest.raises(ValueError, match="do not fit"):
        scale_partials(np.zeros(1), np.zeros((1, 4)), 0.5, 3)


def test_guard_fields_round_trip_and_older_bundles_load_with_scale_one(models: tuple[Any, ...],
                                                                       tmp_path: Path) -> None:
    full, bank, _ = models
    path = guarded_bundle(bundle_from_model(full, vertical=True), bank, 0.6).save(tmp_path / "g")
    loaded = load_bundle(path)
    assert (loaded.host_scale, loaded.host_factors, loaded.n_factors) == (0.6, 3, 5)
    meta = json.loads((path / "serving.json").read_text())
    assert meta["format_version"] == 3
    old = bundle_from_model(full, vertical=True).save(tmp_path / "v2")
    m2 = json.loads((old / "serving.json").read_text())
    for key in ("host_scale", "host_factors"):
        del m2[key]
    (old / "serving.json").write_text(json.dumps({**m2, "format_version": 2}))
    v2 = load_bundle(old)
    assert v2.host_scale == 1.0 and v2.host_factors is None and v2.host_width == 3


@pytest.mark.parametrize(("field", "value", "message"), [
    ("host_scale", 1.5, r"serving\.json: field 'host_scale' must be a number in \[0, 1\], got 1.5"),
    ("host_factors", 9, r"serving\.json: field 'host_factors' must be an integer in 1\.\.5"),
])
def test_bad_guard_fields_of_a_bundle_are_refused_naming_file_and_field(
        models: tuple[Any, ...], tmp_path: Path, field: str, value: Any, message: str) -> None:
    full, bank, _ = models
    path = guarded_bundle(bundle_from_model(full, vertical=True), bank, 0.6).save(tmp_path / "g")
    meta = json.loads((path / "serving.json").read_text())
    (path / "serving.json").write_text(json.dumps({**meta, field: value}))
    with pytest.raises(ArtifactError, match=message):
        load_bundle(path)


def test_partials_of_another_block_width_are_refused(models: tuple[Any, ...]) -> None:
    full, bank, _ = models
    bundle = guarded_bundle(bundle_from_model(full, vertical=True), bank, 0.6)
    users = list(full.user_map.raw_ids[:3])
    wide = HostPartials(np.asarray(users, dtype=object), np.zeros(3), np.zeros((3, 5)), source="wide.parquet")
    with pytest.raises(ArtifactError, match="wide.parquet: host partials have k=5.*'host_factors' says 3"):
        Scorer(bundle, wide)
    with pytest.raises(ArtifactError, match="'host_scale'/'host_factors' are for a 'vertical' bundle"):
        random_bundle(3, 4, 2).__class__(**{**random_bundle(3, 4, 2).__dict__, "host_scale": 0.5})


def test_a_bank_alone_of_other_rows_is_refused(models: tuple[Any, ...]) -> None:
    full, _, _ = models
    other = FactorizationMachine(n_factors=2, epochs=1, validation="none", use_user_features=False).fit(
        generate(n_users=30, n_items=25, seed=9).dataset)
    with pytest.raises(ArtifactError, match="bank-alone model's users .* are not the federated model's"):
        guarded_bundle(bundle_from_model(full, vertical=True), other, 0.5, origin="model/guard.json")


# ---------------------------------------------------------------------------------- fedrec train
def _train(tmp_path: Path, mode: str) -> tuple[dict[str, Any], list[tuple[str, str, int]], Any]:
    """Both parties of ``fedrec train`` in this process over the in-memory twin; returns the summaries
    and what the guest sent the host (message type, step, bytes)."""
    from fedrec.transport import MemoryNetwork, run_parties
    from training import party
    from training.config import load_config
    from training.demo import write_run

    ds = generate(SyntheticConfig(n_users=120, n_items=40, n_ratings=1500, seed=3)).dataset
    gv, hv = vertical_split(ds, seed=0)
    model = {"backend": "plain", "n_factors": 4, "batch_size": 256, "epochs": 3, "timeout": 60.0, "lr": 0.05,
             "label_dp": "off"}
    files = write_run(gv, hv, tmp_path, model)
    files.guest_config.write_text(files.guest_config.read_text() + f'[guard]\nmode = "{mode}"\n')
    cfgs = {r: load_config(c) for r, c in (("guest", files.guest_config), ("host", files.host_config))}
    net = MemoryNetwork()
    chans = {"guest": net.channel("guest", ["host"]), "host": net.channel("host", ["guest"])}
    sent: list[tuple[str, str, int]] = []
    control = ("Goodbye", "Heartbeat")  # the transport's own, timed by whichever party closes first

    def record(peer: str, step: str, n: int, msg: Any) -> None:
        if type(msg).__name__ not in control:
            sent.append((type(msg).__name__, step, n))

    chans["guest"].add_send_listener(record)
    mp = pytest.MonkeyPatch()
    mp.setattr(party, "open_party_channel", lambda cfg: chans[cfg.role])
    try:
        res = run_parties({r: (lambda r=r: party.run_party(cfgs[r])) for r in cfgs}, timeout=120)
    finally:
        mp.undo()
    return res, sent, files


def test_train_guard_is_guest_post_processing_and_serving_applies_it(tmp_path: Path) -> None:
    res_on, sent_on, files = _train(tmp_path / "on", "blend")
    res_off, sent_off, _ = _train(tmp_path / "off", "off")
    # the host receives the same messages, of the same sizes, in the same order, guard on or off
    assert sent_on == sent_off and len(sent_on) > 20
    g = res_on["guest"]["guard"]
    assert g["status"] == "chosen" and 0.0 <= g["alpha"] <= 1.0 and g["n_rows"] > 0
    assert g["source"].startswith("[model] validation = 'random'")
    assert g["blended"] <= min(g["bank_alone"], g["federated"]) + 1e-12
    assert res_off["guest"]["guard"]["status"] == "off"
    model_dir, partials = files.guest_out / "model", files.host_out / "partials.parquet"
    assert read_guard(model_dir).alpha == g["alpha"]  # type: ignore[union-attr]
    ds = generate(SyntheticConfig(n_users=120, n_items=40, n_ratings=1500, seed=3)).dataset
    test = ds.interactions[:200]
    guarded = VerticalFM.load(model_dir, partials)
    federated = VerticalFM.load(model_dir, partials, guard=False)
    bank = FactorizationMachine.load(model_dir / "bank_alone")
    a = g["alpha"]
    want = (1 - a) * bank.decision_function(test) + a * federated.decision_function(test)
    assert guarded.decision_function(test) == pytest.approx(want, abs=1e-9)
    users = list(pd.unique(test["user_id"]))[:20]
    ids, scores = guarded.recommend(users, k=5)
    rec = Scorer.load(model_dir, partials).recommend(users, 5)
    assert rec.scores == pytest.approx(scores, rel=1e-5, abs=1e-5) and (rec.item_ids == ids).all()
    from training.evaluate_cmd import evaluate
    from training.info_cmd import describe

    assert describe(files.guest_out, digests=False)["guard"]["alpha"] == g["alpha"]
    test.to_csv(tmp_path / "test.csv", index=False)  # fedrec evaluate: the guarded model, --no-guard not
    on = evaluate(model_dir, partials, tmp_path / "test.csv", n_boot=20)
    off = evaluate(model_dir, partials, tmp_path / "test.csv", n_boot=20, guard=False)
    y = test["rating"].to_numpy(float)
    assert on["guard_alpha"] == g["alpha"] and off["guard_alpha"] is None
    assert on["rmse"]["point"] == pytest.approx(np.sqrt(np.mean((guarded.predict(test) - y) ** 2)), abs=1e-9)
    assert off["rmse"]["point"] == pytest.approx(np.sqrt(np.mean((federated.predict(test) - y) ** 2)),
                                                 abs=1e-9)
    # fedrec ads predict without a refit scores the same guarded blend
    from fedrec.models.vertical import guest_run_id, read_host_partials
    from training.ads_cmd import _guarded_probability

    half = FactorizationMachine.load(model_dir)
    got = _guarded_probability(model_dir, guest_run_id(model_dir)[0], half, test,
                               read_host_partials(partials, half.config.n_factors))
    assert got == pytest.approx(guarded.predict(test), abs=1e-9)


@pytest.mark.parametrize(("role", "table", "message"), [
    ("guest", '[guard]\nmode = "blnd"\n',
     r"guest\.toml: \[guard\] mode must be one of 'blend', 'choose', 'off', got 'blnd' "
     r"\(did you mean 'blend'\?\)"),
    ("host", '[guard]\nmode = "off"\n', r"host\.toml: \[guard\] is the vertical FM guest's table"),
])
def test_a_bad_guard_table_is_refused_naming_the_file(tmp_path: Path, role: str, table: str,
                                                      message: str) -> None:
    from training.config import ConfigError, parse_config

    peer = "host" if role == "guest" else "guest"
    where = 'listen = "tcp://127.0.0.1:1"' if role == "guest" else ""
    endpoint = "" if role == "guest" else 'endpoint = "tcp://127.0.0.1:1"'
    data = 'interactions = "i.csv"' if role == "guest" else 'user_features = "u.csv"'
    text = (f'[job]\nprotocol = "hetero_fm"\n[party]\nrole = "{role}"\n[network]\ninsecure = true\n{where}\n'
            f'[peers.{peer}]\n{endpoint}\n[data]\n{data}\n[output]\ndir = "out"\n{table}')
    with pytest.raises(ConfigError, match=message):
        parse_config(text, f"{role}.toml", base_dir=tmp_path)
