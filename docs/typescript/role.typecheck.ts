// Compiled with role.ts under `tsc --strict` (scripts/typescript-check.sh): the types a caller
// relies on. A line marked @ts-expect-error must fail to compile, or tsc reports it.
import { USER_ROLES, type UserRole, assertRole, isValidRole } from './role.js';

const input: unknown = 'subscriber_pro';
if (isValidRole(input)) {
  const narrowed: UserRole = input;
  void narrowed;
}
const asserted: UserRole = assertRole(input);
const first: 'user' = USER_ROLES[0];
// @ts-expect-error: not a role
const wrong: UserRole = 'moderator';
// @ts-expect-error: the tuple is readonly
USER_ROLES.push('moderator');
void [asserted, first, wrong];
