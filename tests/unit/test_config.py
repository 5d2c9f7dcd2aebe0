import pytest

from mpidl.cli import parse_config
from mpidl.errors import ConfigError


def test_model_recipe_then_file_then_flags(tmp_path):
    cfg = parse_config([])
    assert (cfg.model, cfg.dataset, cfg.optimizer, cfg.batch_size) == ("mlp", "digits", "adam", 64)
    f = tmp_path / "run.toml"
    f.write_text('model = "logreg"\nbatch_size = 32\nlr = 0.5\n"weight-decay" = 0.001\n')
    cfg = parse_config(["--config", str(f), "--lr", "0.25"])
    assert cfg.model == "logreg" and cfg.batch_size == 32 and cfg.lr == 0.25
    assert cfg.weight_decay == 0.001
    assert cfg.optimizer == "sgd"  # logreg's recipe
    f.write_text('hidden = [32, 16]\n')
    assert parse_config(["--config", str(f)]).hidden_sizes() == (32, 16)


@pytest.mark.parametrize("text,message", [
    ("batchsize = 3", "unknown key 'batchsize'"),
    ("batch_size = 'big'", "batch_size = 'big' should be of type int"),
    ("lr = true", "should be of type float"),
    ("model = 'resnet'", "not a built-in model"),
    ("batch_sise = 3", "did you mean batch_size"),
    ("lr = -1.0", "--lr -1.0: must be positive"),
    ("batch_size = 0", "--batch-size 0: must be at least 1"),
    ("lr = [", "not valid TOML"),
])
def test_bad_config_files(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_config(["--config", str(f)])


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "0"], "must be at least 1"),
    (["--momentum", "1.5"], "must be in"),
    (["--lr", "abc"], "invalid float value"),
    (["--nesterov", "--optimizer", "adam"], "needs --optimizer sgd"),
    (["--hidden", "64,x"], "comma-separated integers"),
    (["--bogus"], "unrecognized arguments"),
    (["--config", "/nonexistent.toml"], "No such file"),
])
def test_bad_flags(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(argv)


@pytest.mark.parametrize("argv,message", [
    (["--model", "cnn", "--hidden", "32"], "--model cnn has no hidden sizes"),
    (["--data-dir", "/tmp"], "--dataset digits is built in and reads no files"),
    (["--momentum", "0.9"], "applies to --optimizer sgd, not adam"),
    (["--lr-gamma", "0.5"], "applies to --schedule step"),
    (["--overlap", "thread"], "applies to bucketed reduction"),
    (["--loss", "mse"], "has its own loss"),
    (["--bach-size", "8"], "did you mean --batch-size"),
    (["--model", "mpl"], "did you mean mlp"),
])
def test_flags_that_would_be_ignored_or_are_misspelled_are_refused(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(argv)


@pytest.mark.parametrize("flags", [["--zero", "1", "--bucket-mb", "1"], ["--zero", "1", "--grad-compression", "fp16"],
                                   ["--allreduce", "hierarchical", "--bucket-mb", "1"], ["--accumulate", "0"],
                                   ["--bucket-mb", "-1"], ["--zero", "2"]])
def test_unsupported_combinations_are_refused(flags):
    with pytest.raises(ConfigError):
        parse_config(flags)
