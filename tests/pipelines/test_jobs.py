"""`genray submit` / `genray jobs` mistakes that need no cluster: one line, exit 2."""
from __future__ import annotations

import shlex
import types

import pytest
import requests
from ray.exceptions import AuthenticationError

from genray.pipelines import cli, jobs


def test_the_entrypoint_is_the_local_command_on_the_uploaded_project():
    command = jobs.entrypoint("train", str(jobs.PROJECT / "pipelines/configs/vae/vae_digits.yaml"),
                              ["trainer.lr=3e-4", "model.beta=2 "])
    assert shlex.split(command) == ["python", "-m", "genray.pipelines.train", "pipelines/configs/vae/vae_digits.yaml",
                                    "--set", "trainer.lr=3e-4", "--set", "model.beta=2 "]
    assert jobs.entrypoint("eval", "models:/vae-digits@champion", []).startswith(
        "python -m genray.pipelines.evaluate models:/vae-digits@champion")


def test_the_runtime_env_uploads_the_project_and_passes_the_tracking_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("GENRAY_STORAGE", "s3://bucket/genray")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    env = jobs.runtime_env()
    assert env["working_dir"] == str(jobs.PROJECT) and ".venv" in env["excludes"]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["env_vars"]["GENRAY_STORAGE"] == "s3://bucket/genray"
    assert "RAY_AUTH_TOKEN" not in env["env_vars"]  # the token never lands in the job's visible env


@pytest.mark.parametrize("argv, message", [
    (["submit", "train", "no/such.yaml"], "config file not found"),
    (["submit", "--address", "ray://head:10001", "train", "pipelines/configs/vae/vae_digits.yaml"],
     "the Ray Jobs API is the dashboard's HTTP address"),
    (["submit", "--address", "http://127.0.0.1:1", "train", "pipelines/configs/vae/vae_digits.yaml"],
     "cannot reach the Ray Jobs API"),
    (["jobs", "list", "--address", "http://127.0.0.1:1"], "cannot reach the Ray Jobs API"),
])
def test_submit_mistakes_exit_2_with_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(jobs.RETRY_ENV, "0")  # an address nothing listens on would be retried for a minute
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_config_outside_the_project_is_refused(tmp_path, capsys):
    outside = tmp_path / "x.yaml"
    outside.write_text("data: {dataset: digits}\n")
    assert cli.main(["submit", "train", str(outside)]) == 2
    assert "must lie inside the project" in capsys.readouterr().err


def test_data_paths_may_be_uris_for_shared_storage(tmp_path):
    """data.path as a pyarrow-filesystem URI (file:// here; s3:// and gs:// the same way) is
    read as it is, not made into a local path."""
    from genray.components.data import DATASETS
    from genray.pipelines import config, train

    paths = DATASETS["digits"](tmp_path / "d", seed=0, size="tiny")
    spec = config.validate({"data": {"path": paths["train"].as_uri(), "test_path": paths["test"].as_uri()},
                            "model": {"family": "vae", "size": "tiny"}}, "<test>")
    data = train.resolve_data(spec, tmp_path / "home")
    assert data.train == paths["train"].as_uri() and data.info.shape == (8, 8, 1)


# ----------------------------------------------------------------------------- retrying a cluster that is not ready

# The SDK's errors, word for word (ray/dashboard/modules/job/job_head.py and job_manager.py).
NO_AGENT = RuntimeError("Request failed with status code 500: "
                        "No available agent to submit job, please try again later..")
DUPLICATE = RuntimeError("Request failed with status code 400: Traceback (most recent call last):\n  File ...\n"
                         "ValueError: Job with submission_id {id} already exists. "
                         "Please use a different submission_id..")


class Clock:
    """Time that passes only when the code under test sleeps, or when a call says it took a while."""

    def __init__(self):
        self.now, self.waits = 0.0, []

    def sleep(self, s: float) -> None:
        self.waits.append(s)
        self.now += s

    def clock(self) -> float:
        return self.now


class FakeJobs:
    """A JobSubmissionClient that refuses with `errors`, one per call, then accepts; a submission
    may land although its answer is lost (`lands`, for a refusal after which the job exists)."""

    def __init__(self, errors=(), lands=()):
        self.errors, self.lands, self.calls, self.jobs = list(errors), set(lands), 0, {}

    def submit_job(self, *, entrypoint, runtime_env, submission_id, entrypoint_num_cpus, metadata):
        self.calls += 1
        if submission_id in self.jobs:
            raise RuntimeError(str(DUPLICATE).format(id=submission_id))
        if self.calls in self.lands:
            self.jobs[submission_id] = metadata
        if self.errors:
            raise self.errors.pop(0)
        self.jobs[submission_id] = metadata
        return submission_id

    def get_job_info(self, submission_id):
        return types.SimpleNamespace(metadata=self.jobs[submission_id])


@pytest.fixture
def fake_time(monkeypatch):
    """jobs.retrying with its sleep and clock injected, so the retries take no real time."""
    clock, real = Clock(), jobs.retrying
    monkeypatch.setattr(jobs, "retrying", lambda what, call, **kw: real(what, call, sleep=clock.sleep,
                                                                         clock=clock.clock, **kw))
    monkeypatch.delenv(jobs.RETRY_ENV, raising=False)
    return clock


def submit_to(fake, monkeypatch, **kw) -> int:
    monkeypatch.setattr(jobs, "client", lambda address, what="genray jobs": fake)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    return jobs.submit("train", "vae/vae_digits", overrides=[], address="http://127.0.0.1:8265", follow=False,
                       say=lambda line: None, **kw)


def test_no_available_agent_is_retried_with_growing_waits_one_line_each(fake_time, monkeypatch, capsys):
    fake = FakeJobs(errors=[NO_AGENT] * 3 + [requests.exceptions.ConnectionError("[Errno 111] Connection refused")])
    assert submit_to(fake, monkeypatch) == 0
    assert fake.calls == 5 and len(fake.jobs) == 1
    assert fake_time.waits == [1, 2, 4, 8]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["genray submit: the cluster is not ready (No available agent to submit job); retrying in 1 s",
                     "genray submit: the cluster is not ready (No available agent to submit job); retrying in 2 s",
                     "genray submit: the cluster is not ready (No available agent to submit job); retrying in 4 s",
                     "genray submit: the cluster is not ready (connection refused); retrying in 8 s"]


@pytest.mark.parametrize("error", [
    RuntimeError("Request failed with status code 503: Service Unavailable."),
    requests.exceptions.HTTPError("502 Server Error: Bad Gateway", response=types.SimpleNamespace(status_code=502)),
    ConnectionError("Failed to connect to Ray at address: http://127.0.0.1:8265."),
    RuntimeError("Request failed with status code 500: Traceback ...\nTimeoutError: Failed to get head node agent "
                 "within 10 seconds."),
])
def test_what_passes_is_transient(error):
    assert jobs.transient(error)


def test_retries_stop_when_the_budget_is_spent_and_the_error_is_one_line(fake_time, monkeypatch, capsys):
    monkeypatch.setenv(jobs.RETRY_ENV, "20")
    fake = FakeJobs(errors=[NO_AGENT] * 100)
    with pytest.raises(jobs.ConfigError, match="the cluster is not ready .No available agent.*retried for 20 s"):
        submit_to(fake, monkeypatch)
    assert fake_time.waits == [1, 2, 4, 8, 5] and sum(fake_time.waits) == 20  # the last wait cut to the budget
    assert len(capsys.readouterr().err.strip().splitlines()) == 5


def test_the_budget_counts_the_time_the_calls_take(fake_time, monkeypatch):
    """Each "No available agent" comes after the head waited 10 s for one: that time counts."""
    monkeypatch.setenv(jobs.RETRY_ENV, "30")

    def slow_refusal():
        fake_time.now += 10
        raise NO_AGENT

    with pytest.raises(RuntimeError):
        jobs.retrying("genray jobs", slow_refusal)
    # 10 s refused, 1 s wait, 10 s refused, 2 s wait, 10 s refused: 33 s, past the 30, so no third wait.
    assert fake_time.waits == [1, 2] and fake_time.now == 33


@pytest.mark.parametrize("error, message", [
    (AuthenticationError("Authentication failed: Unauthorized\n\nThe token is invalid"), "no usable Ray token"),
    (RuntimeError("Request failed with status code 401: Unauthorized."), "refused this client's token"),
    (RuntimeError("Request failed with status code 400: Traceback (most recent call last):\n"
                  "TypeError: submit_job() got an unexpected keyword argument 'x'."), "HTTP 400: TypeError"),
])
def test_refusals_that_would_repeat_are_not_retried(error, message, fake_time, monkeypatch, capsys):
    fake = FakeJobs(errors=[error])
    with pytest.raises(jobs.ConfigError, match=message):
        submit_to(fake, monkeypatch)
    assert fake.calls == 1 and fake_time.waits == [] and capsys.readouterr().err == ""


def test_a_retried_submission_that_had_landed_is_not_run_twice(fake_time, monkeypatch, capsys):
    """The first attempt's job was created but its answer lost with the connection: the retry
    meets "already exists" under the same submission id, sees its own nonce and takes that job."""
    fake = FakeJobs(errors=[requests.exceptions.ConnectionError("('Connection aborted.', RemoteDisconnected())")],
                    lands={1})
    said = []
    monkeypatch.setattr(jobs, "client", lambda address, what="genray jobs": fake)
    assert jobs.submit("train", "vae/vae_digits", overrides=[], address="http://127.0.0.1:8265", follow=False,
                       say=said.append) == 0
    assert fake.calls == 2 and len(fake.jobs) == 1
    (job_id,) = fake.jobs
    assert job_id.startswith("raysubmit_") and said[0].startswith(f"submitted      {job_id}  ")
    assert "retrying in 1 s" in capsys.readouterr().err


def test_a_duplicate_name_is_refused_not_retried_nor_taken_for_ours(fake_time, monkeypatch):
    fake = FakeJobs()
    fake.jobs["mine"] = {"genray.job": "train", jobs.NONCE_KEY: "someone else's"}
    with pytest.raises(jobs.ConfigError, match="'mine' already exists on this cluster; pick another --name"):
        submit_to(fake, monkeypatch, name="mine")
    assert fake.calls == 1 and fake_time.waits == []
    # After a retry too: a job under that id that does not carry our nonce is someone else's.
    fake = FakeJobs(errors=[NO_AGENT])
    real_submit = fake.submit_job

    def someone_else_first(**kw):
        if fake.calls == 1:
            fake.jobs[kw["submission_id"]] = {jobs.NONCE_KEY: "someone else's"}
        return real_submit(**kw)

    fake.submit_job = someone_else_first
    with pytest.raises(jobs.ConfigError, match="already exists"):
        submit_to(fake, monkeypatch, name="mine")
    assert fake.calls == 2


def test_genray_jobs_retries_too_and_a_missing_job_is_not_retried(fake_time, monkeypatch, capsys):
    class Jobs:
        calls = 0

        def get_job_status(self, job_id):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("Request failed with status code 503: Service Unavailable.")
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")

    fake = Jobs()
    monkeypatch.setattr(jobs, "client", lambda address, what="genray jobs": fake)
    with pytest.raises(jobs.ConfigError, match="no job 'nope' on this cluster"):
        jobs.stop_job("nope", "http://127.0.0.1:8265")
    assert fake.calls == 2 and fake_time.waits == [1]
    assert capsys.readouterr().err.strip() == "genray jobs: the cluster is not ready (HTTP 503); retrying in 1 s"


def test_a_bad_retry_budget_is_a_user_error(monkeypatch):
    monkeypatch.setenv(jobs.RETRY_ENV, "a minute")
    with pytest.raises(jobs.ConfigError, match="GENRAY_JOBS_RETRY_S='a minute': seconds"):
        jobs.retrying("genray jobs", lambda: 1)
