// The web console in a real browser: Debian's chromium, headless, driven by playwright-core.
// Run by crates/pgplane/tests/console.rs, which starts `pgplane serve` with a good and a
// failed branch and passes:
//   PGPLANE_PLAYWRIGHT_DIR  folder holding node_modules/playwright-core (scripts/lib.sh: ensure_playwright)
//   CHROMIUM                the browser (default /usr/bin/chromium)
//   CONSOLE_URL             http://127.0.0.1:PORT
//   CONSOLE_TOKEN           a valid token
//   GOOD_BRANCH, FAILED_BRANCH  branch ids
//   SCREENSHOTS             folder for screenshots (for people; nothing compares them)
// Exits 0 when every check passed, 1 with the failed check otherwise.

import assert from 'node:assert/strict';
import path from 'node:path';
import fs from 'node:fs';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};
const pwDir = env('PGPLANE_PLAYWRIGHT_DIR');
const { chromium } = await import(path.join(pwDir, 'node_modules/playwright-core/index.mjs'));
const base = env('CONSOLE_URL');
const token = env('CONSOLE_TOKEN');
const good = env('GOOD_BRANCH');
const failed = env('FAILED_BRANCH');
const shots = env('SCREENSHOTS', 'target/console-screenshots');
fs.mkdirSync(shots, { recursive: true });

const steps = [];
function step(name) {
  steps.push(name);
  console.log(`- ${name}`);
}
const shot = (page, name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });

const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  // Chromium's sandbox does not run as root (containers, CI).
  args: process.getuid && process.getuid() === 0 ? ['--no-sandbox'] : [],
});
let exitCode = 0;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const problems = [];
  page.on('dialog', (d) => { problems.push(`a dialog opened: ${d.message()}`); d.dismiss(); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  const url = () => new URL(page.url());

  step('a page without signing in leads to the sign-in form');
  await page.goto(`${base}/branches`);
  assert.equal(url().pathname, '/sign-in');
  assert.equal(url().searchParams.get('next'), '/branches');
  await shot(page, 'sign-in');

  step('a wrong token is refused and not shown');
  await page.fill('#token', 'this-is-not-the-right-token');
  await page.click('#sign-in');
  await page.waitForSelector('#sign-in-error');
  assert.match(await page.textContent('#sign-in-error'), /not valid/);
  assert.ok(!(await page.content()).includes('this-is-not-the-right-token'), 'the wrong token is echoed');
  // The refusal is a 401 page, which the browser reports on its console: expected.
  assert.deepEqual(problems.splice(0).filter((p) => !/status of 401/.test(p)), []);

  step('the right token signs in and comes back to the branches');
  await page.fill('#token', token);
  await page.click('#sign-in');
  await page.waitForURL(`${base}/branches`);
  assert.ok(!(await page.content()).includes(token), 'the token is rendered');
  const cookies = await context.cookies();
  const c = cookies.find((c) => c.name === 'pgplane_token');
  assert.ok(c && c.httpOnly && c.sameSite === 'Strict', `cookie: ${JSON.stringify(c && { ...c, value: '…' })}`);

  step('the branch list shows the FAILED and the SUCCESS badge, and the error');
  const badge = (id) => page.locator(`tr[data-branch="${id}"] .badge`).first();
  assert.equal((await badge(failed).textContent()).trim(), 'FAILED');
  assert.equal((await badge(good).textContent()).trim(), 'SUCCESS');
  assert.match(await page.locator(`tr[data-branch="${failed}"]`).textContent(), /missing_table/);
  await shot(page, 'branches');

  step('the failed branch shows its error and where it failed');
  await page.click(`tr[data-branch="${failed}"] a`);
  await page.waitForSelector('#branch-error');
  assert.equal((await page.textContent('#branch-status .badge')).trim(), 'FAILED');
  const error = await page.textContent('#branch-error');
  assert.match(error, /relation "missing_table" does not exist/);
  assert.match(error, /42P01/);
  await shot(page, 'branch-failed');

  step('the good branch shows its tables');
  await page.goto(`${base}/branches`);
  await page.click(`tr[data-branch="${good}"] a`);
  await page.waitForSelector('table.tables');
  assert.equal((await page.textContent('#branch-status .badge')).trim(), 'SUCCESS');
  assert.equal(await page.locator('#branch-error').count(), 0);
  assert.match(await page.textContent('tr[data-table="public.reviews"]'), /Reviews of entries/);
  assert.equal(await page.locator('tr[data-table="public.entries"]').count(), 1);
  await shot(page, 'branch-good');

  step("a table's structure: columns, keys both ways, indexes");
  await page.click('tr[data-table="public.reviews"] a');
  await page.waitForSelector('table.columns');
  const entryId = await page.textContent('tr[data-column="entry_id"]');
  assert.match(entryId, /bigint/);
  assert.match(entryId, /not null/);
  assert.match(await page.textContent('table.foreign-keys'), /public\.entries/);
  assert.match(await page.textContent('table.indexes'), /reviews_pkey/);
  await shot(page, 'table-reviews');
  await page.click('table.foreign-keys a');
  await page.waitForSelector('table.referenced-by');
  assert.match(await page.textContent('table.referenced-by'), /public\.reviews/);
  assert.match(await page.textContent('tr[data-column="id"]'), /always/);

  step('the diff against the template shows the added table and column');
  await page.goto(`${base}/branches/${encodeURIComponent(good)}`);
  await page.click('#diff-link');
  await page.waitForSelector('#diff-summary');
  assert.equal(await page.locator('tr.added[data-object="table"][data-name="public.reviews"]').count(), 1);
  assert.equal(await page.locator('[data-diff-table="public.entries"]').count(), 1);
  assert.equal(await page.locator('tr.added[data-object="column"][data-name="email"]').count(), 1);
  const added = await page.locator('tr.added').first().evaluate((e) => getComputedStyle(e.querySelector('td')).backgroundColor);
  assert.notEqual(added, 'rgba(0, 0, 0, 0)', 'added rows are coloured');
  await shot(page, 'diff');

  step('recent operations are listed');
  await page.click('nav >> text=Operations');
  await page.waitForSelector('table.operations');
  assert.ok((await page.locator('table.operations tbody tr[id^="op-"]').count()) >= 3);
  assert.ok((await page.locator('table.operations .badge.bad').count()) >= 1, 'the failed deployment is red');

  step('the databases page lists the servers and the branch databases');
  await page.click('nav >> text=Databases');
  await page.waitForSelector('table.databases');
  assert.ok((await page.locator(`table.databases a[href="/branches/${encodeURIComponent(good)}"]`).count()) >= 1);
  await shot(page, 'databases');

  step('on a phone-sized window nothing makes the page scroll sideways');
  await page.setViewportSize({ width: 390, height: 844 });
  const g = encodeURIComponent(good);
  const paths = ['/', '/branches', `/branches/${encodeURIComponent(failed)}`, `/branches/${g}`,
    `/branches/${g}/tables/public.reviews`, `/branches/${g}/diff`, '/operations'];
  for (const p of paths) {
    await page.goto(`${base}${p}`);
    const { scroll, width } = await page.evaluate(() => ({
      scroll: document.documentElement.scrollWidth,
      width: window.innerWidth,
    }));
    assert.ok(scroll <= width, `${p}: the page is ${scroll}px wide in a ${width}px window`);
    await shot(page, `phone${p.replaceAll(/[/.]/g, '-').replace(/-$/, '') || '-home'}`);
  }

  step('signing out ends the session');
  await page.click('nav >> text=Sign out');
  await page.waitForURL(/\/sign-in/);
  await page.goto(`${base}/branches`);
  assert.equal(url().pathname, '/sign-in');

  assert.deepEqual(problems, [], 'no dialogs, script errors or console errors');
  console.log(`console: all checks passed (${steps.length} steps; screenshots in ${shots})`);
} catch (e) {
  console.error(`console: FAILED at step "${steps.at(-1)}": ${e.stack || e}`);
  exitCode = 1;
} finally {
  await browser.close();
}
process.exit(exitCode);
