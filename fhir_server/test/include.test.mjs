// `_include` of the Medication a medication record names (the service's prefetch templates ask for it).
// Run from the repository root: node --experimental-websocket --test fhir_server/test/

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { startServer } from '../spawn-server.mjs';

const ATC = 'http://fhir.de/CodeSystem/bfarm/atc';

function put(resource) {
  return { resource, request: { method: 'PUT', url: `${resource.resourceType}/${resource.id}` } };
}

function records() {
  const subject = { reference: 'Patient/inc1' };
  const drug = { reference: 'Medication/halo' };
  return [
    put({ resourceType: 'Patient', id: 'inc1' }),
    put({ resourceType: 'Medication', id: 'halo', code: { coding: [{ system: ATC, code: 'N05AD01' }], text: 'Haloperidol' } }),
    put({ resourceType: 'Medication', id: 'unused', code: { text: 'Paracetamol' } }),
    put({ resourceType: 'MedicationRequest', id: 'inc-mr', status: 'active', intent: 'order', subject, medicationReference: drug }),
    put({ resourceType: 'MedicationAdministration', id: 'inc-ma', status: 'completed', subject, medicationReference: drug,
      effectiveDateTime: '2024-03-01T08:00:00Z' }),
    put({ resourceType: 'MedicationStatement', id: 'inc-ms', status: 'active', subject, medicationReference: drug }),
  ];
}

describe('_include of the referenced Medication', () => {
  let server;
  let dir;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'localfhir-include-'));
    fs.writeFileSync(path.join(dir, 'bundle.json'),
      JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry: records() }));
    server = await startServer(['--load', dir]);
  });

  after(async () => {
    await server?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  for (const [type, id] of [['MedicationRequest', 'inc-mr'], ['MedicationAdministration', 'inc-ma'],
    ['MedicationStatement', 'inc-ms']]) {
    test(`${type}?_include=${type}:medication`, async () => {
      const res = await fetch(`${server.base}/${type}?patient=inc1&_include=${type}:medication&_count=100`);
      assert.equal(res.status, 200);
      const body = await res.json();
      const seen = body.entry.map((e) => [e.search.mode, `${e.resource.resourceType}/${e.resource.id}`]);
      assert.deepEqual(seen, [['match', `${type}/${id}`], ['include', 'Medication/halo']]);
      assert.equal(body.total, 1); // included resources are not matches
      const included = body.entry[1];
      assert.equal(included.fullUrl, `${server.base}/Medication/halo`);
      assert.equal(included.resource.code.coding[0].code, 'N05AD01');
    });
  }
});
