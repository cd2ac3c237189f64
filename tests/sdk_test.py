"""Drives the official Mixpanel Python SDK (pinned in tools/setup.sh) with a consumer that records
instead of sending, feeds the exact payload bytes it produced to mp_track / mp_identity_* in a real
PostgreSQL (PGHOST/PGPORT from tests/sdk.sh), and checks the resulting clusters.

Special handling the SDK needs: Mixpanel.alias() ignores any custom consumer and always sends
through a fresh module-level Consumer(), so mixpanel.Consumer itself is replaced; merge() posts to
the 'imports' endpoint with (api_key, api_secret) as a third positional argument; BufferedConsumer
sends batches as one JSON array.
"""
import json
import subprocess
import sys
import uuid

import mixpanel

RECORDED = []  # (endpoint, exact json_message text)


class RecordingConsumer:
    def __init__(self, *args, **kwargs):
        pass

    def send(self, endpoint, json_message, api_key=None, api_secret=None):
        RECORDED.append((endpoint, json_message))

    def flush(self):
        pass


# alias() builds its own Consumer(); BufferedConsumer wraps one: both now record.
mixpanel.Consumer = RecordingConsumer


def psql(sql, *values):
    args = ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"]
    for i, v in enumerate(values):
        args += ["-v", f"v{i}={v}"]
    out = subprocess.run(args, input=sql, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return out.stdout.strip()


passed = failed = 0


def check(name, got, want):
    global passed, failed
    if got == want:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {name}: got {got!r}, want {want!r}")


psql("CREATE EXTENSION IF NOT EXISTS identity_merge;"
     "SELECT mp_create_project('sdk-original');"
     "SELECT mp_create_project('sdk-simplified', 'simplified');")

# Original ID Merge: anonymous events, the $identify event as the seed writes it, alias, merge.
device = "$device:" + str(uuid.uuid4())
orig = mixpanel.Mixpanel("sdk-original", consumer=RecordingConsumer())
orig.track(device, "Page View", {"path": "/pricing"})
orig.track("user-1", "$identify", {"$identified_id": "user-1", "$anon_id": device})
orig.alias("alias-1", "user-1")
orig.merge(None, "user-1", "user-2")
orig.track(12345, "Numeric Id Event")  # numbers as ids
orig.alias("user-1", "user-1")  # refused: errSameIDs

# Simplified ID Merge: $device_id / $user_id on ordinary events.
simp = mixpanel.Mixpanel("sdk-simplified", consumer=RecordingConsumer())
simp.track("$device:D1", "Page View", {"$device_id": "D1"})
simp.track("U1", "Login", {"$device_id": "D1", "$user_id": "U1"})
simp.track("U2", "Login", {"$device_id": "D1", "$user_id": "U2"})  # refused: first link wins

# A BufferedConsumer batch: one JSON array of events.
batch = mixpanel.Mixpanel("sdk-simplified", consumer=mixpanel.BufferedConsumer(max_size=10))
for i in range(3):
    batch.track(f"$device:B{i}", "Page View", {"$device_id": f"B{i}", "$user_id": f"BU{i}"})
batch._consumer.flush()

endpoints = [e for e, _ in RECORDED]
check("endpoints the SDK used", endpoints, ["events"] * 3 + ["imports"] + ["events"] * 6)
responses = []
for endpoint, message in RECORDED:
    responses.append(json.loads(psql("SELECT mp_track(:'v0'::jsonb)", message)))

check("track page view", responses[0], {"status": 1})
check("$identify", responses[1], {"status": 1})
check("alias (sync consumer)", responses[2], {"status": 1})
check("merge (imports)", responses[3], {"status": 1})
check("numeric id event", responses[4], {"status": 1})
check("alias refused", responses[5]["status"], 0)
check("alias refusal code", responses[5]["error"].split(":")[0], "errSameIDs")
check("simplified page view", responses[6], {"status": 1})
check("simplified link", responses[7], {"status": 1})
check("simplified second user refused", responses[8]["error"].split(":")[0], "errDeviceLinkedToOtherUser")
check("buffered batch", responses[9]["status"], 1)
check("buffered batch results", [r["status"] for r in responses[9]["results"]], [1, 1, 1])

check("original cluster", psql("SELECT string_agg(x, ',' ORDER BY x) FROM mp_cluster('user-2', 'sdk-original') x"),
      ",".join(sorted([device, "alias-1", "user-1", "user-2"])))
check("original canonical", psql("SELECT mp_resolve(:'v0', 'sdk-original')", device), "user-1")
check("simplified device", psql("SELECT mp_resolve('$device:D1', 'sdk-simplified')"), "U1")
check("simplified batch", psql("SELECT mp_resolve('$device:B2', 'sdk-simplified')"), "BU2")
check("rejections recorded",
      psql("SELECT string_agg(reason_code, ',' ORDER BY rejection_id) FROM identity_merge.rejections"),
      "errSameIDs,errDeviceLinkedToOtherUser")

# The Identity API bodies of the OpenAPI seed, with this SDK's ids.
check("identity/create", json.loads(psql("SELECT mp_identity_create(:'v0'::jsonb)", json.dumps(
    {"$identified_id": "user-3", "$anon_id": str(uuid.uuid4()), "$token": "sdk-original"}))), {"status": 1})
check("identity/create-alias", json.loads(psql("SELECT mp_identity_create_alias(:'v0'::jsonb)", json.dumps(
    {"alias": "alias-3", "distinct_id": "user-3", "$token": "sdk-original"}))), {"status": 1})
check("identity/merge", json.loads(psql("SELECT mp_identity_merge(:'v0'::jsonb)", json.dumps(
    {"$distinct_ids": ["user-3", "user-1"], "$token": "sdk-original"}))), {"status": 1})
check("after identity API", psql("SELECT mp_resolve('alias-1', 'sdk-original')"), "user-3")

# People: the SDK's /engage payloads, applied with mp_engage and read back with mp_profile.
RECORDED.clear()
people = mixpanel.Mixpanel("sdk-original", consumer=RecordingConsumer())
people.people_set("user-1", {"plan": "pro", "city": "Paris"})
people.people_set_once("user-1", {"first_seen": "2026-01-01"})
people.people_set_once("alias-1", {"first_seen": "2027-01-01"})  # another id of the same person
people.people_increment("user-1", {"visits": 2})
people.people_increment("alias-1", {"visits": 3})
people.people_append("user-1", {"pages": "home"})
people.people_union("user-1", {"tags": ["a", "b"]})
people.people_union("alias-1", {"tags": ["b", "c"]})
people.people_remove("user-1", {"tags": "a"})
people.people_unset("user-1", ["city"])
check("engage endpoint", {e for e, _ in RECORDED}, {"people"})
answers = [json.loads(psql("SELECT mp_engage(:'v0'::jsonb)", m)) for _, m in RECORDED]
check("engage answers", [a["status"] for a in answers], [1] * len(answers))
profile = json.loads(psql("SELECT mp_profile('user-3', 'sdk-original')"))  # user-3 is the person's canonical id now
check("profile of the person", profile,
      {"plan": "pro", "first_seen": "2026-01-01", "visits": 5, "pages": ["home"], "tags": ["b", "c"]})
RECORDED.clear()
people.people_delete("alias-1")
check("people_delete", [json.loads(psql("SELECT mp_engage(:'v0'::jsonb)", m))["status"] for _, m in RECORDED], [1])
check("profile after delete", psql("SELECT mp_profile('user-1', 'sdk-original')"), "{}")

print(f"mixpanel {mixpanel.__version__} SDK payloads: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
