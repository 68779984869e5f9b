import pytest

from ics import config


def write(tmp_path, text):
    p = tmp_path / "ics.toml"
    p.write_text(text)
    return str(p)


def test_layers_defaults_file_env(tmp_path):
    path = write(tmp_path, '[redis]\nurl = "redis://127.0.0.1:7000/1"\n[facility_defaults]\ntime_limit_s = 600\n')
    cfg = config.load(path, environ={"ICS_FACILITY_DEFAULTS_TIME_LIMIT_S": "300"})
    assert cfg["redis"]["url"] == "redis://127.0.0.1:7000/1"          # file over default
    assert cfg["facility_defaults"]["time_limit_s"] == 300             # env over file
    assert cfg["facility_defaults"]["accept_digit"] == "1"             # default kept
    assert cfg.sources == ("defaults", path, "environment")


def test_typo_in_file_names_the_key_and_suggests(tmp_path):
    path = write(tmp_path, '[redis]\nulr = "x"\n')
    with pytest.raises(config.ConfigError, match=r"redis.ulr.*did you mean 'redis.url'"):
        config.load(path, environ={})


def test_unknown_section(tmp_path):
    with pytest.raises(config.ConfigError, match="unknown setting 'rediss'"):
        config.load(write(tmp_path, "[rediss]\nurl='x'\n"), environ={})


def test_wrong_type_from_env_is_refused():
    with pytest.raises(config.ConfigError, match="fastagi.port must be int"):
        config.load(environ={"ICS_FASTAGI_PORT": "45x3"})


def test_misspelt_env_name_is_refused():
    with pytest.raises(config.ConfigError, match="ICS_REDIS_URL"):
        config.load(environ={"ICS_REDIS_UR": "redis://x"})


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[redis\n"), environ={})
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(str(tmp_path / "nope.toml"), environ={})


@pytest.mark.parametrize("env", [
    {"ICS_FACILITY_DEFAULTS_ACCEPT_DIGIT": "2"},       # same as refuse
    {"ICS_FACILITY_DEFAULTS_ACCEPT_DIGIT": "12"},      # not one key
    {"ICS_FACILITY_DEFAULTS_TIME_LIMIT_S": "0"},
    {"ICS_FACILITY_DEFAULTS_PIN_LOCK_AFTER": "2"},     # below pin_max_tries
    {"ICS_DIAL_TEMPLATE": "PJSIP/trunk"},              # no {number}
    {"ICS_AMI_SETTLE_RETRY_MS": "0"},                  # the listener's upkeep would spin
    {"ICS_AMI_ORPHAN_SCAN_S": "-1"},
])
def test_invalid_values_stop_start_up(env):
    with pytest.raises(config.ConfigError):
        config.load(environ=env)


def test_facility_overrides_are_validated():
    d = config.load(environ={})["facility_defaults"]
    assert config.facility_settings(d, {"accept_digit": "5"}, "f")["accept_digit"] == "5"
    with pytest.raises(config.ConfigError):
        config.facility_settings(d, {"accept_digit": "9"}, "f")  # clashes with block


@pytest.mark.parametrize("env, message", [
    ({"ICS_FASTAGI_METRICS_PORT": "70000"}, "fastagi.metrics_port must be a port"),
    ({"ICS_AMI_METRICS_PORT": "-1"}, "ami.metrics_port must be a port"),
    ({"ICS_FASTAGI_DRAIN_TIMEOUT_S": "-5"}, "fastagi.drain_timeout_s must not be negative"),
    ({"ICS_AMI_DETECTOR": "dsp"}, "ami.detector must be one of module, tap"),
    ({"ICS_AMI_NICE": "-5"}, "ami.nice must be 0 to 19"),
    ({"ICS_RECORDINGS_RECORDER_NICE": "20"}, "recordings.recorder_nice must be 0 to 19"),
])
def test_ports_timeouts_and_niceness_are_checked(env, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(environ=env)


def test_metrics_port_0_turns_the_endpoint_off_and_redis_credentials_load():
    cfg = config.load(environ={"ICS_FASTAGI_METRICS_PORT": "0", "ICS_REDIS_USERNAME": "fastagi",
                               "ICS_REDIS_PASSWORD": "x" * 32})
    assert cfg["fastagi"]["metrics_port"] == 0 and cfg["redis"]["username"] == "fastagi"
