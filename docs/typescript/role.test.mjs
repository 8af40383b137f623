// Node's test runner over role.ts as `tsc --strict` compiled it (scripts/typescript-check.sh, run by
// `make test`): every role, and the values the seed's helper must refuse.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { USER_ROLES, assertRole, isValidRole } from './role.js';

const VALID = 'valid roles are: user, admin, subscriber_basic, subscriber_pro';

test('every role is valid and asserts to itself', () => {
  assert.deepEqual([...USER_ROLES], ['user', 'admin', 'subscriber_basic', 'subscriber_pro']);
  for (const role of USER_ROLES) {
    assert.equal(isValidRole(role), true, role);
    assert.equal(assertRole(role), role);
  }
});

test('anything else is refused, naming the value and the valid roles', () => {
  const cases = [
    ['moderator', '"moderator"'],
    ['', '""'],
    ['Admin', '"Admin"'],
    ['admin ', '"admin "'],
    [null, 'null'],
    [undefined, 'undefined'],
    [42, '42'],
    [10n, '10'],
    [true, 'true'],
    [{ role: 'admin' }, 'a value of type object'],
    [['admin'], 'a value of type object'],
    [Symbol('admin'), 'a value of type symbol'],
  ];
  for (const [value, shown] of cases) {
    assert.equal(isValidRole(value), false, shown);
    assert.throws(
      () => assertRole(value),
      (e) => e instanceof TypeError && e.message === `invalid role ${shown}; ${VALID}`,
      shown,
    );
  }
});

test('a long bad value is cut in the error', () => {
  assert.throws(
    () => assertRole('é'.repeat(10_000)),
    (e) => e instanceof TypeError && e.message.length < 200 && e.message.includes('…"; valid roles'),
  );
});
