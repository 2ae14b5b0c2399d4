"""The general broker seen through an independent MQTT stack: Eclipse Paho (paho-mqtt 2.x).

Run by tests/tests/paho.rs as `python general.py <port> <check>`; exit status 0 means the check
held, anything else is a failure with the reason on stderr. The broker's ACL lets anonymous
clients read and write every general topic.
"""

import queue
import sys
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PORT = int(sys.argv[1])
WAIT = 10


class Client:
    """A connected Paho client whose messages land in a queue."""

    def __init__(self, client_id, v5=True, clean=True, expiry=None, will=None, connect=True):
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        kwargs = {} if v5 else {"clean_session": clean}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=proto, **kwargs)
        self.v5 = v5
        self.msgs = queue.Queue()
        self.connack = queue.Queue()
        self.subacks = queue.Queue()
        self.c.on_message = lambda c, u, m: self.msgs.put(m)
        self.c.on_connect = lambda c, u, f, rc, p: self.connack.put((f, rc, p))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(rcs)
        if will:
            topic, payload, props = will
            self.c.will_set(topic, payload, qos=1, properties=props)
        if connect:
            props = None
            if v5 and expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = expiry
            if v5:
                self.c.connect("127.0.0.1", PORT, 30, clean_start=clean, properties=props)
            else:
                self.c.connect("127.0.0.1", PORT, 30)
            self.c.loop_start()
            self.flags, self.rc, self.props = self.connack.get(timeout=WAIT)
            check(not self.rc.is_failure, f"CONNACK {self.rc}")

    def sub(self, topic, qos=1, sub_id=None, **opts):
        if self.v5:
            props = None
            if sub_id is not None:
                props = Properties(PacketTypes.SUBSCRIBE)
                props.SubscriptionIdentifier = sub_id
            self.c.subscribe(topic, options=mqtt.SubscribeOptions(qos=qos, **opts),
                             properties=props)
        else:
            self.c.subscribe(topic, qos)
        return self.subacks.get(timeout=WAIT)

    def pub(self, topic, payload, qos=1, retain=False, props=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(WAIT)

    def msg(self):
        return self.msgs.get(timeout=WAIT)

    def silent(self, secs=0.5):
        try:
            m = self.msgs.get(timeout=secs)
        except queue.Empty:
            return
        fail(f"unexpected message on {m.topic}: {m.payload!r}")

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()

    def crash(self):
        """Drops the socket without DISCONNECT."""
        self.c.loop_stop()
        self.c.socket().close()


def fail(why):
    print(why, file=sys.stderr)
    sys.exit(1)


def check(cond, why):
    if not cond:
        fail(why)


def uid(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def v5_properties_are_forwarded():
    t = uid("props")
    sub = Client(uid("sub"))
    sub.sub(t + "/#")
    pub = Client(uid("pub"))
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("a", "1"), ("a", "2"), ("b", "x")]
    p.ContentType = "application/json"
    p.ResponseTopic = "resp/" + t
    p.CorrelationData = b"\x00corr"
    p.PayloadFormatIndicator = 1
    pub.pub(t + "/x", b"{}", props=p)
    m = sub.msg()
    got = m.properties
    check(got.UserProperty == [("a", "1"), ("a", "2"), ("b", "x")], f"user properties {got}")
    check(got.ContentType == "application/json", f"content type {got}")
    check(got.ResponseTopic == "resp/" + t, f"response topic {got}")
    check(got.CorrelationData == b"\x00corr", f"correlation data {got}")
    check(got.PayloadFormatIndicator == 1, f"payload format {got}")


def v5_qos2_is_delivered_as_qos2():
    t = uid("q2")
    sub = Client(uid("sub"))
    check(sub.sub(t, qos=2)[0].value == 2, "granted QoS 2")
    pub = Client(uid("pub"))
    pub.pub(t, b"exactly", qos=2)
    m = sub.msg()
    check(m.qos == 2, f"delivered at QoS {m.qos}")


def retained_messages_have_retain_1():
    for v5 in (True, False):
        t = uid("ret")
        pub = Client(uid("pub"))
        pub.pub(t, b"kept", retain=True)
        sub = Client(uid("sub"), v5=v5)
        sub.sub(t)
        m = sub.msg()
        check(m.retain, f"RETAIN 0 on a retained message (v5={v5})")
        check(m.payload == b"kept", "payload")


def v5_normal_disconnect_sends_no_will():
    t = uid("will")
    watch = Client(uid("watch"))
    watch.sub(t)
    dev = Client(uid("dev"), will=(t, b"gone", None))
    dev.stop()
    watch.silent(1.0)


def v5_crash_sends_the_will():
    t = uid("will")
    watch = Client(uid("watch"))
    watch.sub(t)
    dev = Client(uid("dev"), will=(t, b"gone", None))
    dev.crash()
    m = watch.msg()
    check(m.payload == b"gone", "will payload")


def v5_empty_client_id_gets_an_assigned_identifier():
    c = Client("")
    assigned = getattr(c.props, "AssignedClientIdentifier", None)
    check(assigned, f"no Assigned Client Identifier in {c.props}")
    check(not hasattr(c.props, "MaximumQoS"), "Maximum QoS announced although QoS 2 works")


def v5_subscription_ids_and_no_local():
    t = uid("sid")
    me = Client(uid("me"))
    me.sub(t + "/+", sub_id=11)
    me.sub(t + "/own", sub_id=12, noLocal=True)
    other = Client(uid("other"))
    other.pub(t + "/own", b"theirs")
    m = me.msg()
    check(sorted(m.properties.SubscriptionIdentifier) == [11, 12], f"ids {m.properties}")
    # Its own publish matches both filters, but the No Local one must not count (MQTT-3.8.3-3).
    me.pub(t + "/own", b"mine")
    m = me.msg()
    check(m.payload == b"mine", m.payload)
    check(m.properties.SubscriptionIdentifier == [11], f"ids {m.properties}")
    me.silent()


def v311_persistent_session_gets_queued_messages():
    t = uid("p4")
    cid = uid("v4dev")
    dev = Client(cid, v5=False, clean=False)
    dev.sub(t)
    dev.stop()
    pub = Client(uid("pub"))
    pub.pub(t, b"while away")
    time.sleep(0.3)
    back = Client(cid, v5=False, clean=False)
    check(back.flags.session_present, "session present")
    check(back.msg().payload == b"while away", "queued message")


def v5_persistent_session_gets_queued_messages():
    t = uid("p5")
    cid = uid("v5dev")
    dev = Client(cid, clean=False, expiry=300)
    dev.sub(t)
    dev.stop()
    pub = Client(uid("pub"))
    for i in range(3):
        pub.pub(t, f"m{i}".encode())
    time.sleep(0.3)
    back = Client(cid, clean=False, expiry=300)
    check(back.flags.session_present, "session present")
    got = [back.msg().payload for _ in range(3)]
    check(got == [b"m0", b"m1", b"m2"], f"in order: {got}")


def v5_message_expiry_is_applied():
    t = uid("exp")
    pub = Client(uid("pub"))
    p = Properties(PacketTypes.PUBLISH)
    p.MessageExpiryInterval = 1
    pub.pub(t, b"short", retain=True, props=p)
    time.sleep(2.1)
    sub = Client(uid("sub"))
    sub.sub(t)
    sub.silent(0.8)


CHECKS = {f.__name__: f for f in [
    v5_properties_are_forwarded,
    v5_qos2_is_delivered_as_qos2,
    retained_messages_have_retain_1,
    v5_normal_disconnect_sends_no_will,
    v5_crash_sends_the_will,
    v5_empty_client_id_gets_an_assigned_identifier,
    v5_subscription_ids_and_no_local,
    v311_persistent_session_gets_queued_messages,
    v5_persistent_session_gets_queued_messages,
    v5_message_expiry_is_applied,
]}

if __name__ == "__main__":
    CHECKS[sys.argv[2]]()
