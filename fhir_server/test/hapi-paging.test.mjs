// HAPI-like paging mode and the simulated search cost of the local FHIR server.
//   node --experimental-websocket --test fhir_server/test/
// Spawns real server processes (the CLI) on free ports.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { simulatedCostMs } from '../server.mjs';
import { startServer as spawnServer } from '../spawn-server.mjs';

const startServer = (args) => spawnServer(['--quiet', ...args]);

const N_OBS = 450; // more than two maximal HAPI pages
const START = Date.UTC(2026, 0, 1);

function writeFixtures(dir) {
  const entry = [
    { resource: { resourceType: 'Patient', id: 'h1' }, request: { method: 'PUT', url: 'Patient/h1' } },
  ];
  for (let i = 0; i < N_OBS; i++) {
    entry.push({
      resource: {
        resourceType: 'Observation',
        id: `h-obs-${i}`,
        status: 'final',
        code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
        subject: { reference: 'Patient/h1' },
        effectiveDateTime: new Date(START + i * 3_600_000).toISOString().replace('.000Z', 'Z'), // hourly
        valueQuantity: { value: 70 + (i % 20), unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
      },
      request: { method: 'PUT', url: `Observation/h-obs-${i}` },
    });
  }
  fs.mkdirSync(path.join(dir, 'hapi'));
  fs.writeFileSync(path.join(dir, 'hapi', 'bundle.json'), JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry }));
}

async function getJson(url) {
  const res = await fetch(url);
  return { res, body: await res.json() };
}

function next(bundle) {
  return (bundle.link ?? []).find((l) => l.relation === 'next')?.url;
}

describe('hapi paging mode', () => {
  let dir;
  let server;
  let ignoring;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'localfhir-hapi-'));
    writeFixtures(dir);
    [server, ignoring] = await Promise.all([
      startServer(['--load', dir, '--paging', 'hapi']),
      startServer(['--load', dir, '--paging', 'hapi', '--ignore-param', 'date']),
    ]);
  });

  after(async () => {
    await Promise.all([server?.stop(), ignoring?.stop()]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('20 a page by default, _getpages next links on the base, every match once in order', async () => {
    let url = `${server.base}/Observation?patient=h1&_sort=-date`;
    const ids = [];
    const times = [];
    let pages = 0;
    while (url && pages < 40) {
      const { res, body } = await getJson(url);
      assert.equal(res.status, 200);
      assert.equal(body.total, N_OBS);
      if (pages > 0) {
        assert.match(url, new RegExp(`^${server.base}\\?_getpages=[^&]+&_getpagesoffset=${pages * 20}&_count=20`));
      }
      for (const e of body.entry) {
        ids.push(e.resource.id);
        times.push(Date.parse(e.resource.effectiveDateTime));
      }
      assert.equal(body.entry.length, pages < 22 ? 20 : 10);
      url = next(body);
      pages += 1;
    }
    assert.equal(pages, 23);
    assert.equal(new Set(ids).size, N_OBS);
    assert.deepEqual(times, [...times].sort((a, b) => b - a));
  });

  test('_count is capped at 200', async () => {
    const { body } = await getJson(`${server.base}/Observation?patient=h1&_count=1000`);
    assert.equal(body.entry.length, 200);
    assert.match(next(body), /_getpagesoffset=200&_count=200/);
    const second = await getJson(next(body));
    assert.equal(second.body.entry.length, 200);
    const third = await getJson(next(second.body));
    assert.equal(third.body.entry.length, N_OBS - 400);
    assert.equal(next(third.body), undefined);
  });

  test('an unknown search id is 410 Gone with an OperationOutcome', async () => {
    const { res, body } = await getJson(`${server.base}?_getpages=nope&_getpagesoffset=20`);
    assert.equal(res.status, 410);
    assert.equal(body.resourceType, 'OperationOutcome');
  });

  test('date bounds are honoured; --ignore-param date ignores them', async () => {
    const since = new Date(START + (N_OBS - 48) * 3_600_000).toISOString();
    const url = (base) => `${base}/Observation?patient=h1&date=ge${since}&_sort=-date&_count=200`;
    const bounded = await getJson(url(server.base));
    assert.equal(bounded.body.total, 48);
    const ignored = await getJson(url(ignoring.base));
    assert.equal(ignored.body.total, N_OBS);
    assert.ok(!ignored.body.link.find((l) => l.relation === 'self').url.includes('date='));
  });
});

describe('simulated search cost', () => {
  test('per search + per match for a new search, per page for _getpages', () => {
    const knobs = { searchLatencyMs: 1000, matchLatencyUs: 500, pageLatencyMs: 40 };
    assert.equal(simulatedCostMs({ cost: { kind: 'search', matches: 1100 } }, knobs), 1550);
    assert.equal(simulatedCostMs({ cost: { kind: 'page', matches: 0 } }, knobs), 40);
    assert.equal(simulatedCostMs({ status: 200 }, knobs), 0); // reads, metadata
  });

  test('a search costs its latency; concurrent searches overlap; later pages are cheap', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'localfhir-cost-'));
    writeFixtures(dir);
    const slow = await startServer([
      '--load', dir, '--paging', 'hapi', '--search-latency-ms', '300', '--match-latency-us', '1000',
      '--page-latency-ms', '20',
    ]);
    try {
      const url = `${slow.base}/Observation?patient=h1&_sort=-date&_count=200`;
      let started = performance.now();
      const { body } = await getJson(url);
      const one = performance.now() - started;
      assert.ok(one >= 300 + N_OBS - 5, `one search took ${one} ms`);
      started = performance.now();
      await getJson(next(body));
      const page = performance.now() - started;
      assert.ok(page >= 20 && page < one, `a later page took ${page} ms`);
      started = performance.now();
      await Promise.all([getJson(url), getJson(url), getJson(url)]);
      const three = performance.now() - started;
      assert.ok(three < 2 * one, `three concurrent searches took ${three} ms (one: ${one} ms)`);
      started = performance.now();
      const read = await fetch(`${slow.base}/Patient/h1`);
      await read.arrayBuffer();
      assert.ok(performance.now() - started < 300, 'a read is not a search');
    } finally {
      await slow.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
