"""ChatHub: the chat's rules, tested without sockets."""

from __future__ import annotations

import random

from socketlab.chat.protocol import ChatHub, Delivery, Member, clean_text, coalesce
from socketlab.lines import LineBuffer, LineTooLong


class Inboxes:
    """Collects deliveries per member, the way clients would receive them."""

    def __init__(self) -> None:
        self.data: dict[Member, bytearray] = {}

    def take(self, deliveries: list[Delivery]) -> None:
        for members, data in deliveries:
            for member in members:
                self.data.setdefault(member, bytearray()).extend(data)

    def lines(self, member: Member) -> list[str]:
        """Lines received since the last call."""
        data = self.data.pop(member, bytearray())
        return data.decode().splitlines()


def setup(room_size: int = 0, count: int = 3) -> tuple[ChatHub, Inboxes, list[Member]]:
    hub = ChatHub(room_size=room_size)
    inbox = Inboxes()
    members = []
    for _ in range(count):
        member, deliveries = hub.connect()
        inbox.take(deliveries)
        members.append(member)
    for member in members:
        inbox.lines(member)
    return hub, inbox, members


def say(hub: ChatHub, inbox: Inboxes, member: Member, *lines: bytes) -> bool:
    reaction = hub.receive(member, list(lines))
    inbox.take(reaction.deliveries)
    return reaction.quit


def test_connect_names_users_and_announces_joins() -> None:
    """userN counts connections; the newcomer is welcomed, the lobby told."""
    hub = ChatHub()
    inbox = Inboxes()
    first, deliveries = hub.connect()
    inbox.take(deliveries)
    second, deliveries = hub.connect()
    inbox.take(deliveries)
    assert inbox.lines(first) == [
        "* welcome user1, you are in lobby (type /help)",
        "* user2 joined lobby",
    ]
    assert inbox.lines(second) == ["* welcome user2, you are in lobby (type /help)"]


def test_a_crowd_passing_through_a_room_is_announced_fifty_then_ten_a_second() -> None:
    """A room hears up to 50 arrivals and departures at once, then 10 a second (a crowd passing through
    the lobby, a restart's storm); each room has its own budget; /who still names everyone."""
    now = [0.0]
    hub = ChatHub(clock=lambda: now[0])
    inbox = Inboxes()
    first, deliveries = hub.connect()
    inbox.take(deliveries)
    crowd = []
    for _ in range(55):
        member, deliveries = hub.connect()
        inbox.take(deliveries)
        crowd.append(member)
    assert inbox.lines(first)[1:] == [f"* user{number} joined lobby" for number in range(2, 52)]
    for member in crowd:
        inbox.lines(member)
    inbox.take(hub.disconnect(crowd[0]))  # departures count too: none left
    say(hub, inbox, crowd[1], b"/join den")
    say(hub, inbox, crowd[2], b"/join den")  # the den's own budget: its first member hears it
    assert inbox.lines(first) == []
    assert inbox.lines(crowd[1]) == ["* you are in den", "* user4 joined den"]
    now[0] = 0.2  # two more, a fifth of a second later
    for member in crowd[3:6]:
        inbox.take(hub.disconnect(member))
    assert inbox.lines(first) == ["* user5 left lobby", "* user6 left lobby"]
    say(hub, inbox, first, b"/who")
    assert inbox.lines(first) == ["* in lobby: user1, " + ", ".join(f"user{n}" for n in range(8, 57))]


def test_announcements_without_a_rate_limit() -> None:
    """announce_rate=0: every arrival is announced, however many a second."""
    hub = ChatHub(announce_rate=0, clock=lambda: 0.0)
    inbox = Inboxes()
    first, deliveries = hub.connect()
    inbox.take(deliveries)
    for _ in range(30):
        inbox.take(hub.connect()[1])
    assert inbox.lines(first)[1:] == [f"* user{number} joined lobby" for number in range(2, 32)]


def test_coalesce_keeps_every_members_bytes_and_order_in_one_delivery() -> None:
    """A crowd joining and a /join: each member gets the same bytes, once, joined."""
    hub = ChatHub()
    sequential, merged = Inboxes(), Inboxes()
    deliveries: list[Delivery] = []
    members = []
    for _ in range(5):
        member, joined = hub.connect()
        members.append(member)
        deliveries += joined
    deliveries += hub.receive(members[0], [b"/join den", b"hi"]).deliveries
    sequential.take(deliveries)
    result = coalesce(deliveries)
    merged.take(result)
    receivers = [member for group, _data in result for member in group]
    assert sorted(m.number for m in receivers) == [1, 2, 3, 4, 5]  # each member once
    for member in members:
        assert merged.data[member] == sequential.data[member]
    assert merged.lines(members[2]) == [
        "* welcome user3, you are in lobby (type /help)",
        "* user4 joined lobby",
        "* user5 joined lobby",
        "* user1 left lobby",
    ]
    # Members 2-5 were told the same things after their welcomes, but the welcomes differ:
    assert len(result) == 5
    assert coalesce(deliveries[:1]) == deliveries[:1]


def test_coalesce_shares_one_join_between_members_told_the_same() -> None:
    hub, _inbox, (a, b, c) = setup()
    deliveries: list[Delivery] = []
    for _ in range(3):
        deliveries += hub.connect()[1]
    result = coalesce(deliveries)
    old = [(list(group), data) for group, data in result if a in group]
    assert old == [([a, b, c], b"* user4 joined lobby\n* user5 joined lobby\n* user6 joined lobby\n")]


class LineByLine(ChatHub):
    """The hub with its one-pass path for ordinary bursts turned off."""

    @staticmethod
    def _plain_burst(member, items):
        return None


def test_one_pass_burst_relays_exactly_what_the_line_rules_relay() -> None:
    """Random bursts (commands, blanks, controls, bad UTF-8, long lines among them):
    receive() gives the same deliveries, to the same members, as the rules applied line by line."""
    rng = random.Random(5)
    anything = [b"a", b"Z", b"1", b" ", b"\t", b"/", b"~", b"\x1b", b"\xc3\xa9", b"\xff"]
    mostly_plain = [b"a", b"Z", b"1", b"~", b"$", b"a", b"Z", b" ", b"/"]
    one_pass = 0
    for _ in range(600):
        alphabet = rng.choice([anything, mostly_plain])
        items: list = [b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(1, 6))]
        if rng.random() < 0.1:
            items.insert(rng.randint(0, len(items)), LineTooLong(4096))
        results = []
        for hub in (ChatHub(), LineByLine()):
            sender, _ = hub.connect()
            hub.connect()
            reaction = hub.receive(sender, items)
            results.append(([([m.name for m in members], data) for members, data in reaction.deliveries], reaction.quit))
        assert results[0] == results[1], items
        one_pass += ChatHub._plain_burst(sender, items) is not None
    assert 50 < one_pass < 550  # both paths were exercised


def test_message_reaches_others_not_sender_and_bursts_coalesce() -> None:
    """A burst of lines is one delivery to the others; the sender gets nothing back."""
    hub, inbox, (a, b, c) = setup()
    reaction = hub.receive(a, [b"hello", b"", b"world"])
    assert reaction.deliveries == [([b, c], b"<user1> hello\n<user1> world\n")]


def test_rooms_isolate_messages_and_cap_members() -> None:
    """/join moves members; messages stay in the room; a full room refuses."""
    hub, inbox, (a, b, c) = setup(room_size=2)
    say(hub, inbox, a, b"/join chess")
    assert inbox.lines(a) == ["* you are in chess"]
    assert inbox.lines(b) == ["* user1 left lobby"]
    assert inbox.lines(c) == ["* user1 left lobby"]
    say(hub, inbox, b, b"/join chess")
    assert inbox.lines(a) == ["* user2 joined chess"]
    assert inbox.lines(b) == ["* you are in chess"]
    assert inbox.lines(c) == ["* user2 left lobby"]
    say(hub, inbox, c, b"/join chess")
    assert inbox.lines(c) == ["! room chess is full (2/2)"]
    assert c.room.name == "lobby"
    say(hub, inbox, a, b"e4")
    assert inbox.lines(b) == ["<user1> e4"]
    assert inbox.lines(c) == []
    say(hub, inbox, c, b"/rooms")
    assert inbox.lines(c) == ["* rooms: chess (2), lobby (1)"]
    say(hub, inbox, a, b"/leave", b"/who")
    assert inbox.lines(a) == ["* you are in lobby", "* in lobby: user3, user1"]
    assert inbox.lines(b) == ["* user1 left chess"]
    assert inbox.lines(c) == ["* user1 joined lobby"]


def test_lobby_is_never_capped() -> None:
    """--room-size applies to every room but the lobby."""
    hub, inbox, members = setup(room_size=2, count=5)
    assert len(hub.rooms["lobby"].members) == 5


def test_empty_rooms_disappear() -> None:
    """A room is deleted when its last member leaves."""
    hub, inbox, (a, b, c) = setup()
    say(hub, inbox, a, b"/join tmp")
    say(hub, inbox, a, b"/join other")
    assert set(hub.rooms) == {"lobby", "other"}


def test_nick_rules() -> None:
    """Valid unique names change; taken (case-insensitive), reserved or invalid ones do not."""
    hub, inbox, (a, b, c) = setup()
    say(hub, inbox, a, b"/nick Alice")
    assert inbox.lines(b) == ["* user1 is now known as Alice"]
    assert inbox.lines(a) == ["* user1 is now known as Alice"]
    assert inbox.lines(c) == ["* user1 is now known as Alice"]
    for attempt, reply in [
        (b"/nick alice", "! nickname alice is taken"),
        (b"/nick user1", "! nickname user1 is reserved: names user<N> are the server's to give"),
        (b"/nick USER99", "! nickname USER99 is reserved: names user<N> are the server's to give"),  # nobody has it
        (b"/nick bad name!", "! invalid nickname: 1 to 32 letters or digits (any script), _ or -; no spaces"),
        (b"/nick " + b"x" * 33, "! invalid nickname: 1 to 32 letters or digits (any script), _ or -; no spaces"),
        ("/nick evil\u202eeman".encode(), "! invalid nickname: 1 to 32 letters or digits (any script), _ or -; no spaces"),
        ("/nick zero\u200bwidth".encode(), "! invalid nickname: 1 to 32 letters or digits (any script), _ or -; no spaces"),
        ("/nick \u0301accent".encode(), "! invalid nickname: 1 to 32 letters or digits (any script), _ or -; no spaces"),
        ("/nick ALICE".encode(), "! nickname ALICE is taken"),
        ("/nick \uff41lice".encode(), "! nickname \uff41lice is taken"),  # fullwidth a: looks alike, so taken
        (b"/nick", "! usage: /nick NAME"),
    ]:
        say(hub, inbox, b, attempt)
        assert inbox.lines(b) == [reply], attempt
    say(hub, inbox, a, b"hi")
    assert inbox.lines(c) == ["<Alice> hi"]


def test_names_of_any_script() -> None:
    """Korean and accented names and rooms are allowed; a name typed decomposed (NFD) is the same name."""
    hub, inbox, (a, b, c) = setup()
    say(hub, inbox, a, "/nick 한국".encode())
    assert inbox.lines(b) == ["* user1 is now known as 한국"]
    say(hub, inbox, b, "/nick cafe\u0301".encode())  # NFD: e + combining acute
    assert inbox.lines(c) == ["* user1 is now known as 한국", "* user2 is now known as café"]
    say(hub, inbox, c, "/nick Café".encode())
    assert inbox.lines(c) == ["! nickname Café is taken"]
    say(hub, inbox, a, "/join 방1".encode())
    assert inbox.lines(a)[-1] == "* you are in 방1"
    say(hub, inbox, c, "/msg 한국 안녕".encode())
    assert inbox.lines(a) == ["<user3> (private) 안녕"]
    say(hub, inbox, a, "hello".encode())
    inbox.lines(b), inbox.lines(c)
    say(hub, inbox, b, "/join 방1".encode())
    assert inbox.lines(a) == ["* café joined 방1"]


def test_private_messages() -> None:
    """/msg reaches only its target, and the sender is told it went; unknown names are an error."""
    hub, inbox, (a, b, c) = setup()
    say(hub, inbox, a, b"/msg user3 psst  secret")
    assert inbox.lines(c) == ["<user1> (private) psst  secret"]
    assert inbox.lines(a) == ["* to user3: psst  secret"]
    assert inbox.lines(b) == []
    say(hub, inbox, a, b"/msg ghost boo")
    assert inbox.lines(a) == ["! no such user ghost"]
    say(hub, inbox, a, b"/msg user3")
    assert inbox.lines(a) == ["! usage: /msg NAME TEXT"]


def test_quit_stops_processing_and_disconnect_announces() -> None:
    """/quit answers bye and ignores what follows; departures are announced with reasons."""
    hub, inbox, (a, b, c) = setup()
    assert say(hub, inbox, a, b"/quit", b"after quit") is True
    assert inbox.lines(a) == ["* bye"]
    assert inbox.lines(b) == []
    inbox.take(hub.disconnect(a))
    assert inbox.lines(b) == ["* user1 left lobby"]
    assert inbox.lines(c) == ["* user1 left lobby"]
    inbox.take(hub.disconnect(b, "too slow"))
    assert inbox.lines(c) == ["* user2 left lobby (too slow)"]
    assert [m.name for m in hub.members] == ["user3"]


def test_unknown_command_help_and_slash_escape() -> None:
    """Unknown commands get a hint; /help lists commands; //x sends /x."""
    hub, inbox, (a, b, c) = setup()
    say(hub, inbox, a, b"/dance now")
    assert inbox.lines(a) == ["! unknown command /dance (type /help)"]
    say(hub, inbox, a, b"/help")
    help_lines = inbox.lines(a)
    assert help_lines[0] == "* commands:" and any("/msg NAME TEXT" in line for line in help_lines)
    say(hub, inbox, a, b"//shrug")
    assert inbox.lines(b) == ["<user1> /shrug"]


def test_line_too_long_reply() -> None:
    """A LineTooLong item is answered to the sender only."""
    hub, inbox, (a, b, c) = setup()
    say(hub, inbox, a, LineTooLong(4096), b"short")
    assert inbox.lines(a) == ["! line too long (max 4096 bytes)"]
    assert inbox.lines(b) == ["<user1> short"]


def test_sanitising_escapes_controls_keeps_unicode() -> None:
    """ESC and other controls are escaped; invalid UTF-8 becomes U+FFFD; Unicode is untouched."""
    assert clean_text("안녕하세요 👋 café".encode()) == "안녕하세요 👋 café".encode()
    assert clean_text(b"\x1b[31mred\x07") == b"\\x1b[31mred\\x07"
    assert clean_text(b"bad \xff byte\ttab") == "bad \ufffd byte\ttab".encode()
    hub, inbox, (a, b, c) = setup()
    say(hub, inbox, a, b"\x1b]0;pwned\x07 hi")
    assert inbox.lines(b) == ["<user1> \\x1b]0;pwned\\x07 hi"]


def test_nobody_can_impersonate() -> None:
    """A line that looks like another user's or a server line still carries the sender's name."""
    hub, inbox, (a, b, c) = setup()
    say(hub, inbox, a, b"<user2> I am user2", b"* user2 left lobby")
    assert inbox.lines(b) == ["<user1> <user2> I am user2", "<user1> * user2 left lobby"]


def test_framing_and_hub_together_byte_by_byte() -> None:
    """Lines fed one byte at a time reach the room whole and in order."""
    hub, inbox, (a, b, c) = setup()
    buffer = LineBuffer(4096)
    for byte in b"first\r\nsecond\n/nick Z\nthird\n":
        say(hub, inbox, a, *buffer.feed(bytes([byte])))
    assert inbox.lines(b) == ["<user1> first", "<user1> second", "* user1 is now known as Z", "<Z> third"]


def test_who_and_rooms_are_paged_on_a_big_server() -> None:
    """/who lists 100 names an answer and /rooms 50 rooms (by name), saying how to get the next page;
    small rooms and servers answer as before; a bad page is a usage error."""
    hub, inbox, members = setup(count=230)
    first = members[0]
    say(hub, inbox, first, b"/who")
    [line] = inbox.lines(first)
    assert line.startswith("* in lobby (230, page 1 of 3): user1, user2, ") and line.endswith("user100 (/who 2 for more)")
    say(hub, inbox, first, b"/who 3")
    assert inbox.lines(first) == ["* in lobby (230, page 3 of 3): " + ", ".join(f"user{n}" for n in range(201, 231))]
    say(hub, inbox, first, b"/who 4", b"/who two", b"/rooms 0")
    assert inbox.lines(first) == ["* in lobby (230): there are 3 pages", "! usage: /who [PAGE]", "! usage: /rooms [PAGE]"]
    for number, member in enumerate(members):
        say(hub, inbox, member, f"/join room{number:03d}".encode())
    for member in members:
        inbox.lines(member)
    say(hub, inbox, first, b"/rooms", b"/rooms 5")
    page1, page5 = inbox.lines(first)
    assert page1.startswith("* rooms (231, page 1 of 5): lobby (0), room000 (1), room001 (1), ")
    assert page1.endswith("room048 (1) (/rooms 2 for more)")
    assert page5 == "* rooms (231, page 5 of 5): " + ", ".join(f"room{n:03d} (1)" for n in range(199, 230))
    say(hub, inbox, first, b"/who")
    assert inbox.lines(first) == ["* in room000: user1"]
