// Tests for the local FHIR server. Run from the repository root:
//   node --experimental-websocket --test fhir_server/test/
// Each test file spawns real server processes (the CLI), so the READY line and the flags are covered too.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { startServer } from '../spawn-server.mjs';

const LOINC_TEMP = 'http://loinc.org|8310-5';
const N_TEMPS = 12;

function temperature(i) {
  return {
    fullUrl: `urn:uuid:00000000-0000-4000-8001-${String(i).padStart(12, '0')}`,
    resource: {
      resourceType: 'Observation',
      status: 'final',
      code: { coding: [{ system: 'http://loinc.org', code: '8310-5' }] },
      subject: { reference: 'urn:uuid:00000000-0000-4000-8000-000000000001' },
      // not in insertion order; one uses a +02:00 offset
      effectiveDateTime:
        i === 3 ? '2024-03-05T12:00:00+02:00' : `2024-03-${String(1 + ((i * 5) % 28)).padStart(2, '0')}T08:00:00Z`,
      valueQuantity: { value: 37 + i / 10, unit: 'Cel', system: 'http://unitsofmeasure.org', code: 'Cel' },
    },
    request: { method: 'POST', url: 'Observation' },
  };
}

function writeFixtures(dir) {
  fs.mkdirSync(path.join(dir, 'case-a'));
  fs.mkdirSync(path.join(dir, 'case-b'));
  const patient = {
    fullUrl: 'urn:uuid:00000000-0000-4000-8000-000000000001',
    resource: { resourceType: 'Patient', id: 'p1', name: [{ family: 'Node' }] },
    request: { method: 'PUT', url: 'Patient/p1' },
  };
  const temps = Array.from({ length: N_TEMPS }, (_, i) => temperature(i));
  fs.writeFileSync(
    path.join(dir, 'case-a', 'bundle.json'),
    JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry: [patient, ...temps] })
  );
  // a collection Bundle named bundle.json is loaded too (entries PUT by id)
  fs.writeFileSync(
    path.join(dir, 'case-b', 'bundle.json'),
    JSON.stringify({
      resourceType: 'Bundle',
      type: 'collection',
      entry: [{ resource: { resourceType: 'Patient', id: 'p2', name: [{ family: 'Collection' }] } }],
    })
  );
  // a top-level transaction file with a conditional-free MedicationRequest
  fs.writeFileSync(
    path.join(dir, 'meds.json'),
    JSON.stringify({
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        {
          resource: {
            resourceType: 'MedicationRequest',
            id: 'mr1',
            status: 'active',
            intent: 'order',
            subject: { reference: 'Patient/p1' },
            medicationCodeableConcept: {
              coding: [{ system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code: '197535' }],
            },
          },
          request: { method: 'PUT', url: 'MedicationRequest/mr1' },
        },
      ],
    })
  );
  fs.writeFileSync(path.join(dir, 'readme.json'), JSON.stringify({ note: 'not a bundle' }));
}

async function getJson(url, init) {
  const res = await fetch(url, init);
  return { res, body: await res.json() };
}

function linkMap(bundle) {
  return Object.fromEntries((bundle.link ?? []).map((l) => [l.relation, l.url]));
}

describe('local FHIR server', () => {
  let server;
  let dir;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'localfhir-test-'));
    writeFixtures(dir);
    server = await startServer(['--load', dir, '--page-size', '5']);
  });

  after(async () => {
    await server?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('prints READY with a loopback /fhir base and loads the fixture folder', async () => {
    assert.match(server.base, /^http:\/\/127\.0\.0\.1:\d+\/fhir$/);
    assert.equal(server.stdout().trim().split('\n').length, 1);
    assert.match(server.stderr(), /skipping .*readme\.json/);
    for (const ref of ['Patient/p1', 'Patient/p2', 'MedicationRequest/mr1']) {
      const { res, body } = await getJson(`${server.base}/${ref}`);
      assert.equal(res.status, 200, ref);
      assert.equal(`${body.resourceType}/${body.id}`, ref);
      assert.match(res.headers.get('content-type'), /^application\/fhir\+json/);
    }
    const { body } = await getJson(`${server.base}/Observation?subject=Patient/p1&_summary=count`);
    assert.equal(body.total, N_TEMPS); // urn:uuid subject references were resolved to Patient/p1
  });

  test('metadata is an R4 CapabilityStatement', async () => {
    const { res, body } = await getJson(`${server.base}/metadata`);
    assert.equal(res.status, 200);
    assert.equal(body.resourceType, 'CapabilityStatement');
    assert.equal(body.fhirVersion, '4.0.1');
  });

  test('search with code, _sort=-date and _count', async () => {
    const url = `${server.base}/Observation?patient=p1&code=${encodeURIComponent(LOINC_TEMP)}&_sort=-date&_count=4`;
    const { res, body } = await getJson(url);
    assert.equal(res.status, 200);
    assert.equal(body.type, 'searchset');
    assert.equal(body.total, N_TEMPS);
    assert.equal(body.entry.length, 4);
    const all = await getJson(url.replace('_count=4', '_count=100'));
    const instants = all.body.entry.map((e) => Date.parse(e.resource.effectiveDateTime));
    assert.deepEqual(instants, [...instants].sort((a, b) => b - a));
    assert.deepEqual(
      body.entry.map((e) => e.resource.id),
      all.body.entry.slice(0, 4).map((e) => e.resource.id)
    );
    const none = await getJson(`${server.base}/Observation?code=http://loinc.org|0000-0`);
    assert.equal(none.body.total, 0);
    const either = encodeURIComponent(`${LOINC_TEMP},http://loinc.org|1-8`);
    const or = await getJson(`${server.base}/Observation?code=${either}&_count=0`);
    assert.equal(or.body.total, N_TEMPS);
  });

  test('POST _search with a form body merged with the query string', async () => {
    const { res, body } = await getJson(`${server.base}/Observation/_search?_count=3`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json+fhir' },
      body: new URLSearchParams({ code: LOINC_TEMP, patient: 'p1', _sort: '-date' }).toString(),
    });
    assert.equal(res.status, 200);
    assert.equal(body.total, N_TEMPS);
    assert.equal(body.entry.length, 3);
    const next = linkMap(body).next;
    assert.ok(next.startsWith(`${server.base}/Observation?`), next);
    assert.match(next, /_offset=3/);
  });

  test('paging: next links cover every match exactly once, in _sort order, default page size', async () => {
    let url = `${server.base}/Observation?patient=p1&_sort=date`;
    const ids = [];
    const instants = [];
    const sizes = [];
    while (url && sizes.length < 10) {
      const { body } = await getJson(url);
      assert.equal(body.total, N_TEMPS);
      assert.ok(linkMap(body).self);
      sizes.push(body.entry.length);
      for (const e of body.entry) {
        ids.push(e.resource.id);
        instants.push(Date.parse(e.resource.effectiveDateTime));
      }
      url = linkMap(body).next;
    }
    assert.deepEqual(sizes, [5, 5, 2]); // --page-size 5
    assert.equal(new Set(ids).size, N_TEMPS);
    assert.deepEqual(instants, [...instants].sort((a, b) => a - b));
  });

  test('transaction with PUT entries is idempotent', async () => {
    const bundle = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        {
          fullUrl: 'urn:uuid:11111111-0000-4000-8000-000000000001',
          resource: { resourceType: 'Patient', id: 'tx1' },
          request: { method: 'PUT', url: 'Patient/tx1' },
        },
        {
          fullUrl: 'urn:uuid:11111111-0000-4000-8000-000000000002',
          resource: {
            resourceType: 'Condition',
            id: 'tx1-c',
            subject: { reference: 'urn:uuid:11111111-0000-4000-8000-000000000001' },
            code: { text: 'test' },
          },
          request: { method: 'PUT', url: 'Condition/tx1-c' },
        },
      ],
    };
    const post = () =>
      getJson(server.base, {
        method: 'POST',
        headers: { 'Content-Type': 'application/fhir+json' },
        body: JSON.stringify(bundle),
      });
    const first = await post();
    const second = await post();
    assert.equal(first.res.status, 200);
    assert.equal(first.body.type, 'transaction-response');
    assert.deepEqual(first.body.entry.map((e) => e.response.status), ['201', '201']);
    assert.deepEqual(second.body.entry.map((e) => e.response.status), ['200', '200']);
    assert.equal(second.body.entry[1].resource.subject.reference, 'Patient/tx1');
    const { body } = await getJson(`${server.base}/Condition?patient=tx1`);
    assert.equal(body.total, 1);
  });

  test('a failing transaction is rolled back', async () => {
    const { res, body } = await getJson(server.base, {
      method: 'POST',
      headers: { 'Content-Type': 'application/fhir+json' },
      body: JSON.stringify({
        resourceType: 'Bundle',
        type: 'transaction',
        entry: [
          { resource: { resourceType: 'Patient', id: 'rb1' }, request: { method: 'PUT', url: 'Patient/rb1' } },
          { resource: { resourceType: 'Patient', id: 'other' }, request: { method: 'PUT', url: 'Patient/rb2' } },
        ],
      }),
    });
    assert.equal(res.status, 400);
    assert.equal(body.resourceType, 'OperationOutcome');
    assert.equal((await fetch(`${server.base}/Patient/rb1`)).status, 404);
  });

  test('errors are OperationOutcomes with proper status codes', async () => {
    const cases = [
      [`${server.base}/Patient/does-not-exist`, 404],
      [`${server.base}/NotAType/1`, 404],
      [`${server.base}/Observation?date=garbage`, 400],
      [`${server.base}/Observation?_count=-1`, 400],
      [`${server.base}/Observation?value-quantity=gt38`, 400],
      [`${server.origin}/elsewhere`, 404],
    ];
    for (const [url, status] of cases) {
      const { res, body } = await getJson(url);
      assert.equal(res.status, status, url);
      assert.equal(body.resourceType, 'OperationOutcome', url);
    }
  });

  test('CORS preflight and CORS headers on responses', async () => {
    const pre = await fetch(`${server.base}/Observation/_search`, {
      method: 'OPTIONS',
      headers: {
        Origin: 'http://sandbox.example',
        'Access-Control-Request-Method': 'POST',
        'Access-Control-Request-Headers': 'authorization,content-type',
      },
    });
    assert.equal(pre.status, 204);
    assert.equal(pre.headers.get('access-control-allow-origin'), '*');
    assert.match(pre.headers.get('access-control-allow-methods'), /GET.*POST.*PUT.*OPTIONS/);
    assert.match(pre.headers.get('access-control-allow-headers'), /Authorization.*Content-Type.*Accept/);
    const get = await fetch(`${server.base}/Patient/p1`, { headers: { Origin: 'http://sandbox.example' } });
    assert.equal(get.headers.get('access-control-allow-origin'), '*');
  });

  describe('fault injection', () => {
    const fault = (mode) => `${server.origin}/fault/${mode}/fhir`;

    test('status-503 answers an OperationOutcome', async () => {
      const { res, body } = await getJson(`${fault('status-503')}/Observation?patient=p1`);
      assert.equal(res.status, 503);
      assert.equal(body.resourceType, 'OperationOutcome');
    });

    test('a fault scoped to a resource type leaves other types healthy', async () => {
      assert.equal((await fetch(`${fault('status-401:Observation')}/Observation?patient=p1`)).status, 401);
      const { res, body } = await getJson(`${fault('status-401:Observation')}/Patient/p1`);
      assert.equal(res.status, 200);
      assert.equal(body.id, 'p1');
    });

    test('html answers 200 text/html', async () => {
      const res = await fetch(`${fault('html')}/Patient/p1`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type'), /^text\/html/);
      await assert.rejects(res.json());
    });

    test('truncated sends half the body and closes', async () => {
      const res = await fetch(`${fault('truncated')}/Observation?patient=p1`);
      assert.equal(res.status, 200);
      assert.ok(Number(res.headers.get('content-length')) > 0);
      await assert.rejects(res.text());
    });

    test('reset destroys the connection', async () => {
      await assert.rejects(fetch(`${fault('reset')}/Patient/p1`));
    });

    test('hang never answers', async () => {
      await assert.rejects(fetch(`${fault('hang')}/Patient/p1`, { signal: AbortSignal.timeout(300) }), (err) =>
        ['TimeoutError', 'AbortError'].includes(err.name)
      );
    });

    test('wrong-type answers a Patient for a search', async () => {
      const { res, body } = await getJson(`${fault('wrong-type')}/Observation?patient=p1`);
      assert.equal(res.status, 200);
      assert.equal(body.resourceType, 'Patient');
    });

    test('next-loop and next-offsite rewrite the next link', async () => {
      const loopUrl = `${fault('next-loop')}/Observation?patient=p1&_count=2`;
      const loop = await getJson(loopUrl);
      assert.equal(loop.body.entry.length, 2);
      assert.equal(linkMap(loop.body).next, loopUrl);
      const off = await getJson(`${fault('next-offsite')}/Observation?patient=p1&_count=2`);
      assert.equal(linkMap(off.body).next, 'http://offsite.invalid/fhir/Observation?page=2');
    });

    test('huge streams a ~50 MB searchset without Content-Length', async () => {
      const res = await fetch(`${fault('huge')}/Observation`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-length'), null);
      let size = 0;
      for await (const chunk of res.body) {
        size += chunk.length;
      }
      assert.ok(size > 45 * 1024 * 1024, `only ${size} bytes`);
    });

    test('slow sends one byte at a time', async () => {
      const controller = new AbortController();
      const started = Date.now();
      const res = await fetch(`${fault('slow')}/Patient/p1`, { signal: controller.signal });
      const reader = res.body.getReader();
      let got = 0;
      while (got < 2) {
        const { value } = await reader.read();
        got += value.length;
      }
      controller.abort();
      assert.ok(Date.now() - started >= 300);
    });

    test('unknown mode is a 400', async () => {
      const { res, body } = await getJson(`${fault('explode')}/Patient/p1`);
      assert.equal(res.status, 400);
      assert.equal(body.resourceType, 'OperationOutcome');
    });
  });
});

describe('command line', () => {
  test('--latency-ms delays every FHIR request', async () => {
    const server = await startServer(['--latency-ms', '60', '--quiet']);
    try {
      const started = performance.now();
      const res = await fetch(`${server.base}/metadata`);
      await res.arrayBuffer();
      assert.ok(performance.now() - started >= 60);
    } finally {
      await server.stop();
    }
  });

  test('refuses a non-loopback host without --allow-remote', async () => {
    const result = await startServer(['--host', '0.0.0.0'], { expectFailure: true });
    assert.equal(result.code, 2);
    assert.match(result.stderr, /non-loopback/);
    assert.equal(result.stdout, '');
  });

  test('fails loudly on an unloadable bundle', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'localfhir-bad-'));
    try {
      fs.writeFileSync(path.join(dir, 'bad.json'), '{"resourceType": "Bundle", ');
      const result = await startServer(['--load', dir], { expectFailure: true });
      assert.equal(result.code, 1);
      assert.match(result.stderr, /invalid JSON/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
