#!/usr/bin/env bash
# Identity records (the seed's "Create an Identity"): mp_identity_record_create's success answers
# parsed by the seed's own Zod IdentitySchema (npm zod, pinned in tests/zod/package.json), the
# same content giving the same identity_id, every bad body answering 400 naming its field and
# storing nothing, and a record that describes a person following it through a merge and a split.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib.sh
if ! command -v npm >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
cluster_throwaway records
q() { cluster_psql -At "$@" 2>&1 || true; }
# qb BODY SQL: runs SQL (read from stdin, so psql interpolates :'b') with BODY bound to b.
qb() { printf '%s\n' "$2" | cluster_psql -At -v "b=$1" 2>&1 || true; }
cluster_extension
cluster_psql >/dev/null -c "SELECT mp_set_project_setting('default', 'anon_id_format', 'any')"
A=0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed
# Success cases: the seed's example (with a real address), every optional field, the image_url spelling.
bodies=(
  "{\"display_name\": \"JP\", \"creator\": \"$A\", \"description\": \"It is JP.\", \"image\": \"https://my-image.com/me.jpg\", \"external_reference\": \"https://github.com\"}"
  "{\"display_name\": \"Only a name\", \"creator\": \"$A\"}"
  "{\"display_name\": \"Pic\", \"creator\": \"$A\", \"image_url\": \"http://example.org/p.png\"}"
  "{\"display_name\": \"Person\", \"creator\": \"$A\", \"distinct_id\": \"U1\", \"\$token\": \"default\"}"
)
answers="["
for i in "${!bodies[@]}"; do
  a=$(qb "${bodies[$i]}" "SELECT mp_identity_record_create(:'b'::jsonb)")
  [ "$i" = 0 ] || answers="$answers,"
  answers="$answers{\"name\": \"success $i\", \"answer\": $a}"
done
answers="$answers]"
echo "$answers" > "$dir/answers.json"
# The same content again (keys in another order, the address in other case): the same record.
first=$(qb "${bodies[0]}" "SELECT mp_identity_record_create(:'b'::jsonb) ->> 'identity_id'")
again=$(q -c "SELECT mp_identity_record_create('{\"external_reference\": \"https://github.com\", \"image\": \"https://my-image.com/me.jpg\", \"description\": \"It is JP.\", \"creator\": \"$(echo "$A" | tr 'A-F' 'a-f')\", \"display_name\": \"JP\"}') ->> 'identity_id'")
again="$again $(qb "${bodies[0]}" "SELECT mp_identity_record_create(:'b'::jsonb) ->> 'created'")"
[ "$again" = "$first false" ] && ok || bad "same content, same record: [$first] vs [$again]"
[ "$(q -c "SELECT count(*) FROM identity_merge.identity_records")" = 4 ] && ok || bad "four records"
# Bad bodies: 400 Bad Request naming the field; nothing stored.
for spec in "display_name|{\"creator\": \"$A\"}" \
            "display_name|{\"display_name\": \"\", \"creator\": \"$A\"}" \
            "display_name|{\"display_name\": 7, \"creator\": \"$A\"}" \
            "creator|{\"display_name\": \"JP\"}" \
            "creator|{\"display_name\": \"JP\", \"creator\": \"0x...81\"}" \
            "image|{\"display_name\": \"JP\", \"creator\": \"$A\", \"image\": \"not a url\"}" \
            "external_reference|{\"display_name\": \"JP\", \"creator\": \"$A\", \"external_reference\": \"github.com\"}" \
            "surprise|{\"display_name\": \"JP\", \"creator\": \"$A\", \"surprise\": 1}" \
            "\$token|{\"display_name\": \"JP\", \"creator\": \"$A\", \"distinct_id\": \"U9\", \"\$token\": \"nope\"}" \
            "body|[1, 2]"; do
  field=${spec%%|*}; body=${spec#*|}
  got=$(qb "$body" "SELECT (mp_identity_record_create(:'b'::jsonb) - 'message')::text")
  [ "$got" = "{\"error\": \"Bad Request\", \"field\": \"$field\", \"status\": 400}" ] && ok || bad "bad body $body: $got"
done
[ "$(q -c "SELECT count(*) FROM identity_merge.identity_records")" = 4 ] && ok || bad "bad bodies stored nothing"
# A record describing a person follows it: shown by mp_profile through any id, kept by a merge,
# taken along by a split.
cluster_psql >/dev/null -c "SELECT mp_identify('U1', 'D1')"
[ "$(q -c "SELECT jsonb_array_length(mp_profile('D1') -> '\$identity_records')")" = 1 ] && ok || bad "a record in the person's profile"
cluster_psql >/dev/null -c "SELECT * FROM mp_split('U1')"
[ "$(q -c "SELECT (mp_profile('D1') ? '\$identity_records')::text || ' ' || (mp_profile('U1') ? '\$identity_records')::text")" = "false true" ] && ok || bad "the record stays with U1 after the split"
# Least-privileged roles: a writer creates records (and cannot touch the table directly); a
# reader cannot create one.
cluster_psql >/dev/null <<'SQL'
CREATE ROLE rec_writer LOGIN; CREATE ROLE rec_reader LOGIN;
SELECT mp_grant_writer('rec_writer'); SELECT mp_grant_reader('rec_reader');
SQL
got=$(q -U rec_writer -c "SELECT mp_identity_record_create('{\"display_name\": \"By a writer\", \"creator\": \"$A\"}') ->> 'display_name'")
[ "$got" = "By a writer" ] && ok || bad "a writer creates a record: $got"
got=$(q -U rec_writer -c "DELETE FROM identity_merge.identity_records")
case "$got" in *"permission denied"*) ok ;; *) bad "a writer cannot delete records directly: $got" ;; esac
got=$(q -U rec_reader -c "SELECT mp_identity_record_create('{\"display_name\": \"By a reader\", \"creator\": \"$A\"}')")
case "$got" in *"permission denied"*) ok ;; *) bad "a reader cannot create a record: $got" ;; esac
[ "$(q -c "SELECT count(*) FROM identity_merge.identity_records")" = 5 ] && ok || bad "five records after the role checks"
# The seed's Zod schema parses every success answer.
cp tests/zod/package.json "$dir/"
cp tests/zod/identity_schema.mjs "$dir/"
(cd "$dir" && npm install --silent --no-audit --no-fund >/dev/null 2>&1) || bad "npm install zod"
if (cd "$dir" && node identity_schema.mjs answers.json); then ok; else bad "zod IdentitySchema"; fi
summary "identity records"
