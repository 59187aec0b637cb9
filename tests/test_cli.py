from instructvla.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_suggests(capsys):
    assert main(["trian"]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err


def test_dashed_and_bare_boolean_flags_are_normalised():
    from dataclasses import dataclass

    from instructvla.cli import _normalize_flags

    @dataclass
    class Cfg:
        random_tiny: bool = False
        port: int = 0

    assert _normalize_flags(["--random-tiny", "--port", "5"], Cfg) == ["--random_tiny=true", "--port", "5"]
    assert _normalize_flags(["--random-tiny=false"], Cfg) == ["--random_tiny=false"]
    assert _normalize_flags(["--random_tiny"], Cfg) == ["--random_tiny=true"]
