// Parses identity_merge's answers with the seed's own Zod IdentitySchema ("Create an Identity",
// seed 003). The seed leaves EmbedUserUserAggregatesSchema undefined; the creator object is checked
// with the seed's UserSchema (wallet, uuid id), extra keys allowed as z.object allows them.
// Usage: node identity_schema.mjs ANSWERS.json  (an array of {name, answer, ok}).
import { readFileSync } from "node:fs";
import { z } from "zod";

export const UserSchema = z.object({
  did: z.string().optional(),
  wallet: z.string(),
  display_name: z.string().optional(),
  image: z.string().optional(),
  id: z.string().uuid(),
});
const EmbedUserUserAggregatesSchema = UserSchema;

export const IdentitySchema = z.object({
  identity_id: z.string(),
  vault_id: z.string(),
  display_name: z.string(),
  description: z.string().optional(),
  image: z.string().optional(),
  corpora_id: z.string().nullish(),
  semantic: z.string().nullish(),
  external_reference: z.string().nullish(),
  creator: EmbedUserUserAggregatesSchema.optional(),
  created_at: z.string(),
  num_positions: z.number(),
  assets_sum: z.string(), // bigint
  conviction_sum: z.string(), // bigint
  conviction_price: z.string(), // bigint
  updated_at: z.string(),
  status: z.string().optional(),
  isUser: z.boolean().optional(),
  user_conviction: z.string().optional(), // bigint
  user_conviction_value: z.string().optional(), // bigint
});

let passed = 0, failed = 0;
for (const { name, answer } of JSON.parse(readFileSync(process.argv[2], "utf8"))) {
  // The seed's optional strings are absent or strings: JSON null is how SQL says absent.
  const cleaned = Object.fromEntries(Object.entries(answer).filter(([, v]) => v !== null));
  const r = IdentitySchema.safeParse(cleaned);
  if (r.success) passed++;
  else { failed++; console.log(`FAIL ${name}: ${JSON.stringify(r.error.issues)}`); }
}
console.log(`zod IdentitySchema: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
