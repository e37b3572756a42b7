// Spawning the server CLI for the Node tests (test/*.test.mjs): the READY line, stop, and a start that is
// expected to fail. Not a test file itself (node --test runs what is under test/).

import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const SERVER = fileURLToPath(new URL('./server.mjs', import.meta.url));
const NODE_FLAGS = Number(process.versions.node.split('.')[0]) < 22 ? ['--experimental-websocket'] : [];

/**
 * Start `server.mjs` with `args` on a free port. Resolves with { child, base, origin, stderr(), stdout(), stop() }
 * once it prints READY, or, with `expectFailure`, with { code, stderr, stdout } once it exits.
 */
export function startServer(args, { expectFailure = false } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...NODE_FLAGS, SERVER, '--port', '0', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`server not ready after 30 s; stderr:\n${stderr}`));
    }, 30_000);
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    child.stdout.on('data', (d) => {
      stdout += d;
      const m = /^READY (\S+)$/m.exec(stdout);
      if (m && !expectFailure) {
        clearTimeout(timer);
        resolve({
          child,
          base: m[1],
          origin: m[1].replace(/\/fhir$/, ''),
          stderr: () => stderr,
          stdout: () => stdout,
          stop: () =>
            new Promise((r) => {
              if (child.exitCode !== null) {
                r();
                return;
              }
              child.once('exit', () => r());
              child.kill('SIGTERM');
            }),
        });
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (expectFailure) {
        resolve({ code, stderr, stdout });
      } else {
        reject(new Error(`server exited with ${code} before READY; stderr:\n${stderr}`));
      }
    });
  });
}
