"""What the agent's VM checks (agent-e2e.py, agent-hsctrl.py) share: the tally, waiting on a
condition, reading the agent's published state, and whether it exited."""
import json, time

tally = {"passed": 0, "failed": 0}


def check(cond, what, detail=""):
    tally["passed" if cond else "failed"] += 1
    print(f"{'ok  ' if cond else 'FAIL'} {what}" + (f"  [{detail}]" if detail else ""), flush=True)
    return cond


def wait_for(cond, timeout, step=0.1):
    """cond()'s first true value within timeout seconds, else its last value."""
    end = time.time() + timeout
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


def read_state(path):
    """The agent's state file, or None while it is absent or half-written."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def exited(pid):
    """pid is gone or a zombie not reaped yet (it may be reaped between any two reads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] == "Z"
    except FileNotFoundError:
        return True
