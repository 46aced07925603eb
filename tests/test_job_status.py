"""neox.launch.job_status: how a Slurm job ended, from every rank's own status (the real jobs are in
tests/test_slurm.py; these are the orders of events the batch script must read right)."""

from neox.launch.job_status import main, verdict


def test_a_stop_is_75_whatever_the_order_of_the_ranks():
    # rank 1 exits 75 first; srun --kill-on-bad-exit terminates rank 0 while it closes (the old 143)
    assert verdict({0: (143, 2.0), 1: (75, 1.0)})[0] == 75
    assert verdict({0: (75, 1.0), 1: (75, 1.5)}) == (75, "stopped on request after a complete checkpoint "
                                                         "(rank 0 exited 75 first; 2 of 2 ranks exited 75)")
    assert verdict({0: (75, 1.0), 1: None})[0] == 75  # a rank killed with its launcher after the stop


def test_the_first_failing_rank_is_named_with_its_signal():
    status, line = verdict({0: (1, 2.0), 1: (137, 1.0)})
    assert (status, line) == (137, "rank 1 failed first: it was killed by SIGKILL (status 137); "
                                   "1 other rank(s) ended after it")
    # a failure before a 75 is a failure, not a stop
    assert verdict({0: (75, 3.0), 1: (139, 1.0)})[0] == 139
    assert verdict({0: (2, 1.0), 1: (2, 1.1)}) == (2, "rank 0 failed first: it exited with status 2: a config "
                                                      "error (its error line is above); 1 other rank(s) ended after it")
    assert verdict({0: (76, 1.0), 1: (143, 2.0)})[0] == 76
    assert verdict({0: (0, 1.0), 1: (0, 1.0)}) == (0, "training finished: all 2 ranks exited 0")
    assert verdict({0: (0, 1.0), 1: None})[0] == 1


def test_a_rank_killed_by_the_stop_signal_itself_is_a_stop_only_when_one_was_sent():
    early = {0: (138, 1.0), 1: (138, 1.0)}  # SIGUSR1 before the trainer listened
    assert verdict(early)[0] == 138
    status, line = verdict(early, stop_requested=True)
    assert status == 75 and "resumes from its newest checkpoint" in line


def test_command_line(tmp_path, capsys):
    (tmp_path / "rank0").write_text("75 1.5\n")
    (tmp_path / "rank1").write_text("143 2.5\n")
    assert main([str(tmp_path), "2"]) == 75
    assert "rank 0 exited 75 first" in capsys.readouterr().out
    assert main([str(tmp_path)]) == 2


def test_the_shell_side_uses_the_exit_status_table():
    """slurm/common.sh's requeue rules and its refusals name the statuses of neox/exit_status.py."""
    import os
    import re

    from neox import exit_status

    text = open(os.path.join(os.path.dirname(__file__), "..", "slurm", "common.sh")).read()
    codes = dict(re.findall(r"\b(REQUEUE_EXIT_CODE|HUNG_EXIT_CODE)=(\d+)", text))
    assert codes == {"REQUEUE_EXIT_CODE": str(exit_status.STOPPED), "HUNG_EXIT_CODE": str(exit_status.HUNG)}
    assert set(re.findall(r"(?:^\s*|\|\|\s*)exit (\d+)\s*$", text, re.M)) == {str(exit_status.BAD_INPUT)}  # a wrong REPO: refused
    assert set(exit_status.MEANING) == {exit_status.OK, exit_status.FAILED, exit_status.BAD_INPUT,
                                        exit_status.STOPPED, exit_status.HUNG}
