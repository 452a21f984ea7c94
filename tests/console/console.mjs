// The operator console in a real browser (Debian's chromium, driven by playwright-core).
// Run by tests/console.rs against a `tongban serve` it started; every check that fails throws.
// Environment: BASE (server URL), KEY (operator key), MODEL1 and MODEL2 (model file paths),
// SUBJECT (a subject with a profile), APPROVALS (path of `tongban report approvals --json`
// output for the imported log), SHOTS (folder for screenshots), CHROMIUM (browser path).
import { chromium } from 'playwright-core';
import { readFileSync, mkdirSync } from 'node:fs';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`environment variable ${k} is not set`);
  return v;
};
const BASE = env('BASE');
const KEY = env('KEY');
const SHOTS = env('SHOTS');
mkdirSync(SHOTS, { recursive: true });

let checks = 0;
function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  checks++;
}

async function api(path, init = {}) {
  const res = await fetch(BASE + path, { ...init, headers: { 'x-api-key': KEY, 'content-type': 'application/json', ...(init.headers || {}) } });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null };
}

async function until(what, f, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // As root in a sandbox-less container; no background traffic on a closed network.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const text = async (sel) => (await page.locator(sel).first().innerText()).trim();

  // Without a session every page leads to the log-in form; a wrong key is refused.
  await page.goto(BASE + '/console/approvals');
  check(page.url().endsWith('/console/login'), `redirected to the log-in form, at ${page.url()}`);
  await page.fill('input[name=key]', 'not-the-key');
  const refused = await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  check(refused[0].status() === 401, `a wrong key answers 401, got ${refused[0].status()}`);
  check((await text('#flash')).length > 0, 'a wrong key shows a message');
  const cookiesBefore = await context.cookies();
  check(!cookiesBefore.some((c) => c.name === 'tb_console'), 'no session cookie after a wrong key');

  // Log in: an HttpOnly, SameSite=Strict session cookie.
  await page.fill('input[name=key]', KEY);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  check(page.url().endsWith('/console/'), `logged in, at ${page.url()}`);
  const session = (await context.cookies()).find((c) => c.name === 'tb_console');
  check(session && session.httpOnly && session.sameSite === 'Strict', `session cookie flags: ${JSON.stringify(session)}`);
  check(!(await page.content()).includes(KEY), 'the key is not in the page');

  // Every page, in both languages, with a screenshot; no open-console banner with a key set.
  const pages = ['', 'models', 'pushes', 'ratings', 'journeys', 'approvals', 'subjects'];
  for (const lang of ['zh-CN', 'en']) {
    for (const p of pages) {
      const res = await page.goto(`${BASE}/console/${p}?lang=${lang}`);
      check(res.status() === 200, `/console/${p} in ${lang} answers 200, got ${res.status()}`);
      check((await page.getAttribute('html', 'lang')) === lang, `/console/${p} is in ${lang}`);
      check((await text('h1')).length > 0, `/console/${p} has a heading`);
      check((await page.locator('#open-mode').count()) === 0, 'no open-mode banner when a key is set');
      await page.screenshot({ path: `${SHOTS}/${p || 'overview'}-${lang}.png`, fullPage: false });
    }
  }
  // The language sticks (cookie) without the query.
  await page.goto(BASE + '/console/ratings');
  check((await page.getAttribute('html', 'lang')) === 'en', 'the chosen language is kept');

  // Figures against the API's.
  const models = (await api('/admin/models')).json;
  await page.goto(BASE + '/console/');
  check((await text('#model-version')) === models.active, `overview shows the active model ${models.active}`);
  const queue = (await api('/admin/queue')).json;
  await page.goto(BASE + '/console/pushes');
  check(Number(await text('#dead-count')) === queue.depth.dead, `dead letters ${queue.depth.dead} as in /admin/queue`);
  check(queue.depth.dead >= 1, 'the test made a dead letter');
  const approvals = JSON.parse(readFileSync(env('APPROVALS'), 'utf8'));
  await page.goto(BASE + '/console/approvals');
  check(Number(await text('#approvals-total')) === approvals.applications,
    `approvals: ${await text('#approvals-total')} applications on the page, ${approvals.applications} from tongban report`);
  check(Number(await text('#approvals-over')) === approvals.over, 'approvals over the limit as in tongban report');
  const firstOver = approvals.services.find((s) => s.over > 0);
  const row = page.locator(`#approvals-services tr[data-service="${firstOver.service}"]`);
  check(Number(await row.getAttribute('data-over-share')) === firstOver.over_share,
    `share over the limit of ${firstOver.service} as in tongban report`);

  // Ratings: click through to a service.
  await page.goto(BASE + '/console/ratings');
  const worst = page.locator('#ratings-services tbody tr a').first();
  await Promise.all([page.waitForNavigation(), worst.click()]);
  check((await page.locator('#service-detail').count()) === 1, 'a rated service opens its detail');

  // Activate a second model file, then roll back to the first.
  await page.goto(BASE + '/console/models');
  await page.fill('form[action="/console/models/activate"] input[name=path][type=text]', env('MODEL2'));
  await Promise.all([page.waitForNavigation(), page.click('form[action="/console/models/activate"]:has(input[type=text]) button')]);
  check((await page.locator('#flash.flash').count()) === 1, `activation flash: ${await text('#flash')}`);
  let active = (await api('/admin/models')).json.models.find((m) => m.active);
  check(active.path === env('MODEL2'), `the second file is active: ${active.path}`);
  await Promise.all([page.waitForNavigation(), page.click('#rollback')]);
  check((await page.locator('#flash.flash').count()) === 1, `roll-back flash: ${await text('#flash')}`);
  active = (await api('/admin/models')).json.models.find((m) => m.active);
  check(active.path === env('MODEL1'), `rolled back to the first file: ${active.path}`);

  // Redeliver the dead letter: the receiver accepts it now.
  await page.goto(BASE + '/console/pushes');
  const id = await text('#dead-letters code.push-id');
  await Promise.all([page.waitForNavigation(), page.click('#dead-letters button.redeliver')]);
  check((await page.locator('#flash.flash').count()) === 1, `redeliver flash: ${await text('#flash')}`);
  await until(`push ${id} delivered after the redelivery`, async () => (await api(`/admin/pushes/${id}`)).json?.status === 'delivered');

  // Look a subject up: profile, suggestions as the API gives them, and the audit entry.
  const subject = env('SUBJECT');
  await page.goto(BASE + '/console/subjects');
  await page.fill('input[name=id]', subject);
  await Promise.all([page.waitForNavigation(), page.click('#look-up')]);
  check((await page.locator(`#subject-detail[data-subject="${subject}"]`).count()) === 1, 'the subject is shown');
  const recs = (await api(`/v1/users/${subject}/recommendations?k=5&locale=en`)).json;
  const shown = await page.locator('#suggestions tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.service));
  check(JSON.stringify(shown) === JSON.stringify(recs.suggestions.map((s) => s.service.id)),
    `suggestions as the API gives them: ${shown} vs ${recs.suggestions.map((s) => s.service.id)}`);
  const audit = await page.locator('#audit-log td.subject').allInnerTexts();
  check(audit[0] === subject, `the look-up is the newest audit entry: ${audit.slice(0, 3)}`);
  await page.screenshot({ path: `${SHOTS}/subjects-lookup-en.png`, fullPage: false });

  // An action without the session's CSRF token is refused and changes nothing.
  const before = (await api('/admin/models')).json.active;
  const [forged] = await Promise.all([page.waitForNavigation(), page.evaluate(() => {
    const f = document.createElement('form');
    f.method = 'post';
    f.action = '/console/models/rollback';
    const i = document.createElement('input');
    i.name = 'csrf';
    i.value = 'forged';
    f.appendChild(i);
    document.body.appendChild(f);
    f.submit();
  })]);
  check(forged.status() === 403, `a forged token answers 403, got ${forged.status()}`);
  check((await api('/admin/models')).json.active === before, 'the forged roll-back changed nothing');

  // Log out: the session ends.
  await Promise.all([page.waitForNavigation(), page.click('#logout')]);
  await page.goto(BASE + '/console/models');
  check(page.url().endsWith('/console/login'), 'logged out');
  // The API docs (Swagger UI) render from the binary alone: a request leaving the server is
  // refused and recorded.
  const offsite = [];
  await page.route('**/*', (route) => {
    if (route.request().url().startsWith(BASE)) return route.continue();
    offsite.push(route.request().url());
    return route.abort();
  });
  await page.goto(BASE + '/docs/');
  await page.waitForSelector('.opblock', { timeout: 15000 });
  const ops = await page.locator('.opblock').count();
  check(ops >= 24, `Swagger UI lists every operation: ${ops}`);
  check((await text('.info .title')).startsWith('tongban'), 'the docs title');
  check(offsite.length === 0, `no request left the server: ${offsite}`);
  await page.screenshot({ path: `${SHOTS}/docs.png`, fullPage: false });
  await page.unroute('**/*');

  console.log(`console browser test: ${checks} checks passed`);
} finally {
  await browser.close();
}
