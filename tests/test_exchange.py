"""fedkd's message exchange: every reply collected, a silent node costs the timeout and no more,
and the poll backs off while nothing arrives. A fake grid and a fake clock: nothing here sleeps."""

from types import SimpleNamespace

import pytest

from fedkd.apps import exchange as ex


class FakeClock:
    def __init__(self):
        self.now, self.waits = 0.0, []

    def __call__(self):
        return self.now

    def wait(self, seconds):
        assert seconds >= 0
        self.waits.append(seconds)
        self.now += seconds


class FakeGrid:
    """Node n answers on the pull after `answer_on[n]` pulls (None: never); each pull costs
    `pull_cost` seconds of the fake clock."""

    def __init__(self, clock, answer_on, pull_cost=0.0):
        self.clock, self.answer_on, self.pull_cost = clock, answer_on, pull_cost
        self.pulls, self.sent = 0, {}

    def push_messages(self, messages):
        self.sent = {f"m{i}": node for i, node in enumerate(messages)}
        return list(self.sent)

    def pull_messages(self, message_ids):
        self.pulls += 1
        self.clock.now += self.pull_cost
        out = []
        for mid in sorted(message_ids):
            node = self.sent[mid]
            due = self.answer_on[node]
            if due is not None and self.pulls >= due:
                out.append(SimpleNamespace(node=node, metadata=SimpleNamespace(reply_to_message_id=mid)))
        return out


def _messages(nodes):
    """The fake grid's messages are just their destination nodes."""
    return list(nodes)


def _nodes_of(replies):
    return sorted(r.node for r in replies)


def test_every_reply_is_collected_once_whenever_it_arrives():
    clock = FakeClock()
    grid = FakeGrid(clock, {1: 1, 2: 3, 3: 3, 4: 9})
    replies = ex.exchange(grid, _messages([1, 2, 3, 4]), timeout=60, clock=clock, wait=clock.wait)
    assert _nodes_of(replies) == [1, 2, 3, 4]
    assert grid.pulls == 9  # stops at the last reply


def test_all_replies_at_the_first_pull_need_no_wait():
    clock = FakeClock()
    grid = FakeGrid(clock, {1: 1, 2: 1})
    assert _nodes_of(ex.exchange(grid, _messages([1, 2]), timeout=60, clock=clock, wait=clock.wait)) == [1, 2]
    assert clock.waits == []


def test_a_node_that_never_answers_costs_the_timeout_and_the_others_are_returned():
    clock = FakeClock()
    grid = FakeGrid(clock, {1: 2, 2: None})
    replies = ex.exchange(grid, _messages([1, 2]), timeout=5.0, clock=clock, wait=clock.wait)
    assert _nodes_of(replies) == [1]
    assert clock.now == pytest.approx(5.0)  # the last wait is cut to end at the deadline, then one last pull


def test_the_wait_backs_off_while_nothing_arrives_and_restarts_after_a_reply():
    clock = FakeClock()
    grid = FakeGrid(clock, {1: 4, 2: None})
    ex.exchange(grid, _messages([1, 2]), timeout=1.0, clock=clock, wait=clock.wait)
    first = clock.waits[:3]
    assert first == sorted(first) and first[0] < first[-1]  # growing: 2 pulls without a reply
    assert clock.waits[3] == ex.MIN_WAIT  # a reply came on pull 4
    assert max(clock.waits) <= ex.MAX_WAIT


def test_a_slow_pull_is_not_repeated_more_often_than_its_share():
    clock = FakeClock()
    grid = FakeGrid(clock, {1: None}, pull_cost=0.02)
    ex.exchange(grid, _messages([1]), timeout=10.0, clock=clock, wait=clock.wait)
    assert all(w >= ex.PULL_SHARE * 0.02 - 1e-12 for w in clock.waits[:-1])  # the last is cut at the deadline


def test_polling_grid_sends_through_exchange_and_passes_everything_else_on():
    clock = FakeClock()
    grid = FakeGrid(clock, {7: 1})
    grid.get_node_ids = lambda: [7]
    polling = ex.PollingGrid(grid)
    assert list(polling.get_node_ids()) == [7]
    assert _nodes_of(polling.send_and_receive(_messages([7]), timeout=1.0)) == [7]
