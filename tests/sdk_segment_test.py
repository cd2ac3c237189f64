"""Drives the official Segment (segment-analytics-python) and RudderStack (rudder-sdk-python)
SDKs, pinned in tools/sdk_python.sh, in sync mode with their HTTP session replaced by one that
records the exact request body (gunzipped when the SDK compresses it) instead of sending, feeds
those bytes to mp_segment in a real PostgreSQL (PGHOST/PGPORT from tests/sdk.sh), and checks the
clusters each project ends with: Simplified semantics (anonymousId is the device), Original rules
($identify from identify calls, $create_alias from alias calls), and the refusals recorded.
"""
import gzip
import json
import subprocess
import uuid

import segment.analytics.request as segment_request
from segment.analytics.client import Client as SegmentClient
import rudderstack.analytics.request as rudder_request
from rudderstack.analytics.client import Client as RudderClient

RECORDED = []  # exact request bodies, as text


class Response:
    status_code = 200
    text = "{}"

    def json(self):
        return {}


class RecordingSession:
    def post(self, url, data=None, **kwargs):
        if isinstance(data, bytes):
            data = gzip.decompress(data).decode("utf-8")
        RECORDED.append(data)
        return Response()


segment_request._session = RecordingSession()
rudder_request._session = RecordingSession()


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


def send_all(project=None):
    """Feeds every recorded body to mp_segment; returns the answers."""
    answers = []
    for body in RECORDED:
        if project is None:
            answers.append(json.loads(psql("SELECT mp_segment(:'v0'::jsonb)", body)))
        else:
            answers.append(json.loads(psql("SELECT mp_segment(:'v0'::jsonb, :'v1')", body, project)))
    RECORDED.clear()
    return answers


def resolve(id_, project):
    return psql("SELECT mp_resolve(:'v0', :'v1')", id_, project)


psql("CREATE EXTENSION IF NOT EXISTS identity_merge;"
     "SELECT mp_create_project('seg-simplified', 'simplified');"
     "SELECT mp_create_project('seg-original');"
     "SELECT mp_set_project_setting('seg-original', 'anon_id_format', 'any');"
     "SELECT mp_create_project('rudder-simplified', 'simplified');")

# --- Segment, Simplified project named by the writeKey: the doc's signup and returning user ---
seg = SegmentClient("seg-simplified", sync_mode=True)
anon1, anon2 = str(uuid.uuid4()), str(uuid.uuid4())
seg.page(anonymous_id=anon1, name="Home")
seg.track(anonymous_id=anon1, event="Viewed Pricing")
seg.identify(user_id="user-1", anonymous_id=anon1, traits={"plan": "pro"})
seg.track(user_id="user-1", event="Purchase", properties={"total": 12})
seg.page(anonymous_id=anon2, name="Home")
seg.track(user_id="user-1", anonymous_id=anon2, event="Logged In")  # returning user, second device
seg.group(user_id="user-1", group_id="acme", anonymous_id=anon2)
bodies = list(RECORDED)
answers = send_all()
check("segment bodies carry the writeKey", all(json.loads(b)["writeKey"] == "seg-simplified" for b in bodies), True)
check("segment answers", [a["status"] for a in answers], [1] * len(answers))
check("segment: first device is user-1", resolve(f"$device:{anon1}", "seg-simplified"), "user-1")
check("segment: second device is user-1", resolve(f"$device:{anon2}", "seg-simplified"), "user-1")

# alias(previousId -> userId): a device seen before links in Simplified too
anon3 = str(uuid.uuid4())
seg.track(anonymous_id=anon3, event="Viewed")
seg.alias(previous_id=anon3, user_id="user-2")
send_all()
check("segment alias links the previous id", resolve(f"$device:{anon3}", "seg-simplified"), "user-2")

# a device already linked to user-1 is refused for user-3, recorded with the message
seg.identify(user_id="user-3", anonymous_id=anon1)
answer = send_all()[0]
check("segment refusal answered", answer["status"], 0)
check("segment refusal recorded", psql(
    "SELECT reason_code FROM identity_merge.rejections r JOIN identity_merge.projects p USING (project_id) "
    "WHERE p.token = 'seg-simplified' ORDER BY rejection_id DESC LIMIT 1"), "errDeviceLinkedToOtherUser")

# --- Segment, Original project named by the call: identify is $identify, alias is $create_alias ---
orig = SegmentClient("some-write-key", sync_mode=True)
orig.track(anonymous_id="o-anon", event="Viewed")
orig.identify(user_id="o-user", anonymous_id="o-anon")
orig.alias(previous_id="o-user", user_id="o-user@example.com")
orig.track(user_id="o-other", anonymous_id="o-anon-2", event="x")  # track joins nothing in Original
answers = send_all("seg-original")
check("original answers", [a["status"] for a in answers], [1, 1, 1, 1])
check("original: $identify", resolve("o-anon", "seg-original"), "o-user")
check("original: $create_alias", resolve("o-user@example.com", "seg-original"), "o-user")
check("original: track joins nothing", resolve("o-anon-2", "seg-original"), "o-anon-2")

# --- RudderStack (no writeKey in the body): the project is passed, messages batched ---
rud = RudderClient("rudder-write-key", sync_mode=True, dataPlaneUrl="https://example.invalid") \
    if "dataPlaneUrl" in RudderClient.__init__.__code__.co_varnames else RudderClient("rudder-write-key", sync_mode=True)
anon4 = str(uuid.uuid4())
rud.track(anonymous_id=anon4, event="Viewed")
rud.identify(user_id="r-user", anonymous_id=anon4)
rud.screen(user_id="r-user", anonymous_id=anon4, name="Home")
check("rudder bodies have no writeKey", all("writeKey" not in json.loads(b) for b in RECORDED), True)
unnamed = json.loads(psql("SELECT mp_segment(:'v0'::jsonb)", RECORDED[0]))
check("rudder without a project is refused by name", unnamed["status"] == 0 and "writeKey" in json.dumps(unnamed), True)
answers = send_all("rudder-simplified")
check("rudder answers", [a["status"] for a in answers], [1, 1, 1])
check("rudder: device linked", resolve(f"$device:{anon4}", "rudder-simplified"), "r-user")

# One body holding several messages, as the SDKs' background consumers send them.
batch = {"batch": [
    {"type": "identify", "userId": "b-user", "anonymousId": "b-anon", "messageId": "m1"},
    {"type": "track", "userId": "b-user", "anonymousId": "b-anon-2", "event": "x", "messageId": "m2"},
    {"type": "oops"},
], "writeKey": "seg-simplified"}
answer = json.loads(psql("SELECT mp_segment(:'v0'::jsonb)", json.dumps(batch)))
check("batch answers per message", [r["status"] for r in answer["results"]], [1, 1, 0])
check("batch links", resolve("$device:b-anon-2", "seg-simplified"), "b-user")
check("provenance of a segment join", psql(
    "SELECT source || ':' || (source_detail->>'type') FROM mp_explain('$device:b-anon', 'seg-simplified')"),
    "segment:identify")
check("mp_check clean", psql("SELECT count(*) FROM mp_check('seg-simplified')") + psql(
    "SELECT count(*) FROM mp_check('seg-original')"), "00")

print(f"segment/rudderstack SDK payloads: {passed} passed, {failed} failed")
raise SystemExit(1 if failed else 0)
