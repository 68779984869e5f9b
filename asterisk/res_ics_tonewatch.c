/*
 * res_ics_tonewatch: three-way call signatures in a channel's received audio, detected in the
 * channel's own thread, reported as AMI events.
 *
 * Copyright (C) 2026 the ICS contributors
 *
 * This program is free software, distributed under the terms of the GNU General Public
 * License Version 2 (like Asterisk, into which it loads; this file alone: the rest of the ICS
 * project is AGPL-3.0-or-later). See the LICENSE file of Asterisk (https://www.asterisk.org/)
 * for the full text.
 *
 * What it does: Set(ICS_TONEWATCH(set)=plan=na dial_tone_ms=800 ...) (or AMI Setvar on the
 * channel) attaches a read-direction manipulate audiohook, as TALK_DETECT does. The hook sees a
 * signed-linear 8 kHz copy of each frame the channel reads (it never changes the audio: it
 * returns "not modified"), runs a Goertzel bank at the tone plan's frequencies over 50 ms
 * windows stepped 25 ms, and follows runs of equal windows. A decision (dial tone held, a
 * ringback burst, busy cadence, the SIT sequence, an in-band digit, dead air after sound) raises
 * one AMI event:
 *
 *   Event: ICSTone
 *   Channel, Uniqueid, Linkedid
 *   Signature: dial_tone | ringback | busy | sit | digits | dead_air
 *   OnsetMs, DurationMs: on the watched audio's own clock (ms from the first frame watched)
 *   LevelDbfs, Detail
 *   StartedMs: epoch ms of the first frame watched (OnsetMs + StartedMs: the onset's wall time)
 *
 * This is a line-for-line port of ami/tones.py's Detector (the listener's Python detector of
 * the AudioSocket tap): same windows, thresholds and decisions; keep the two in step.
 */

#ifdef TONEWATCH_STANDALONE
/* the detector alone, for bench/threeway/port.py (the same corpus through this and ami/tones.py) */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
struct ast_audiohook { int unused; };
#define AST_CHANNEL_NAME 80
#define AST_MAX_UNIQUEID 150
#define __atomic_add_fetch(p, v, o) (*(p) += (v))
#define manager_event(cat, name, fmt, ...) printf(fmt, __VA_ARGS__)
#else
#include "asterisk.h"

#include <math.h>
#include <stddef.h>
#include <time.h>

#include "asterisk/module.h"
#include "asterisk/channel.h"
#include "asterisk/pbx.h"
#include "asterisk/audiohook.h"
#include "asterisk/manager.h"
#include "asterisk/cli.h"
#include "asterisk/utils.h"
#include "asterisk/strings.h"
#endif

#define RATE 8000
#define WIN 400            /* 50 ms window */
#define HOP 200            /* 25 ms step */
#define HOP_MS 25
#define SOUND_BEFORE_DROP 40
#define MAX_FREQS 24
#define PREV 12

enum { S_DEAD, S_QUIET, S_SOUND, S_DIAL, S_RINGBACK, S_BUSY, S_TONE, S_SIT1, S_SIT2, S_SIT3, S_DTMF };

static const double SIT_BANDS[3][2] = {{913.8, 985.2}, {1370.6, 1428.5}, {1776.7, 0}};
static const double DTMF_LOW[4] = {697.0, 770.0, 852.0, 941.0};
static const double DTMF_HIGH[4] = {1209.0, 1336.0, 1477.0, 1633.0};
static const char *DTMF_KEYS[4] = {"123A", "456B", "789C", "*0#D"};

struct plan {
	const char *name;
	double dial[2], ringback[2], busy[2];   /* 0: unused */
	int ringback_on_ms[2];
};

static const struct plan PLANS[] = {
	{"na", {350.0, 440.0}, {440.0, 480.0}, {480.0, 620.0}, {1600, 2400}},
	{"eu", {425.0, 0}, {425.0, 0}, {425.0, 0}, {800, 1300}},
};

struct run {
	int state, start, windows, fired;
	double level_sum;
};

struct watch {
	struct ast_audiohook audiohook;
	const struct plan *plan;
	int shared;                              /* dial, ringback and busy share one frequency */
	/* thresholds (ami/tones.py Thresholds) */
	int dial_tone_ms, ringback_ms, busy_bursts, drop_min_ms;
	double drop_floor_dbfs, sound_dbfs, min_tone_dbfs, purity;
	/* the Goertzel bank */
	int nf;
	double freqs[MAX_FREQS], coeff[MAX_FREQS];
	int i_dial[2], i_ringback[2], i_busy[2], i_sit[3][2], i_low[4], i_high[4];
	/* samples */
	double buf[WIN];
	int fill;
	int64_t started_ms;
	/* runs */
	int window, loud_window, has_run, nprev;
	struct run run, prev[PREV];
	char channel[AST_CHANNEL_NAME], uniqueid[AST_MAX_UNIQUEID], linkedid[AST_MAX_UNIQUEID];
};

/* the cost, for the bench: frames looked at and CPU spent on them (this thread's clock, read on
 * one frame in CPU_SAMPLE and scaled: the clock is a system call, about as dear as the analysis) */
#define CPU_SAMPLE 32
static unsigned long long stat_frames, stat_cpu_ns, stat_watches, stat_events;

static int64_t thread_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (int64_t) ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int freq_index(struct watch *w, double f)
{
	int i;
	if (f == 0) {
		return -1;
	}
	for (i = 0; i < w->nf; i++) {
		if (w->freqs[i] == f) {
			return i;
		}
	}
	w->freqs[w->nf] = f;
	w->coeff[w->nf] = 2 * cos(2 * M_PI * f / RATE);
	return w->nf++;
}

static void build_bank(struct watch *w)
{
	int i, k;
	const struct plan *p = w->plan;
	w->nf = 0;
	for (i = 0; i < 2; i++) {
		w->i_dial[i] = freq_index(w, p->dial[i]);
		w->i_ringback[i] = freq_index(w, p->ringback[i]);
		w->i_busy[i] = freq_index(w, p->busy[i]);
	}
	for (k = 0; k < 3; k++) {
		for (i = 0; i < 2; i++) {
			w->i_sit[k][i] = freq_index(w, SIT_BANDS[k][i]);
		}
	}
	for (i = 0; i < 4; i++) {
		w->i_low[i] = freq_index(w, DTMF_LOW[i]);
		w->i_high[i] = freq_index(w, DTMF_HIGH[i]);
	}
	w->shared = p->dial[0] == p->ringback[0] && p->dial[1] == p->ringback[1];
}

/* a pair's share of the window's energy, and its smaller part */
static int pair_match(const double *share, const int *idx, double best, double *total)
{
	double a = share[idx[0]], b = idx[1] >= 0 ? share[idx[1]] : 0;
	double least = idx[1] >= 0 ? (a < b ? a : b) : 0;
	*total = a + b;
	return *total >= best && least >= (idx[1] >= 0 ? 0.15 * *total : 0);
}

static int classify(struct watch *w, const double *share, double level)
{
	double best = w->purity, total;
	int state = S_SOUND, k, lo = 0, hi = 0, i;

	if (level < w->drop_floor_dbfs) {
		return S_DEAD;
	}
	if (level < w->min_tone_dbfs) {
		return S_QUIET;
	}
	if (pair_match(share, w->i_dial, best, &total)) {
		best = total; state = S_DIAL;
	}
	if (pair_match(share, w->i_ringback, best, &total)) {
		best = total; state = S_RINGBACK;
	}
	if (pair_match(share, w->i_busy, best, &total)) {
		best = total; state = S_BUSY;
	}
	if (w->shared && (state == S_DIAL || state == S_RINGBACK || state == S_BUSY)) {
		state = S_TONE;
	}
	for (k = 0; k < 3; k++) {
		total = share[w->i_sit[k][0]];
		if (w->i_sit[k][1] >= 0 && share[w->i_sit[k][1]] > total) {
			total = share[w->i_sit[k][1]];
		}
		if (total >= best) {
			best = total; state = S_SIT1 + k;
		}
	}
	for (i = 1; i < 4; i++) {
		if (share[w->i_low[i]] > share[w->i_low[lo]]) {
			lo = i;
		}
		if (share[w->i_high[i]] > share[w->i_high[hi]]) {
			hi = i;
		}
	}
	{
		double a = share[w->i_low[lo]], b = share[w->i_high[hi]], pair = a + b;
		if (pair >= best && (a < b ? a : b) >= 0.2 * pair) {
			state = S_DTMF + lo * 4 + hi;
		}
	}
	return state;
}

static double run_level(const struct run *r)
{
	return r->level_sum / (r->windows > 1 ? r->windows : 1);
}

static void report(struct watch *w, const char *signature, struct run *r, int onset, const char *detail)
{
	int start = onset >= 0 ? onset : r->start;
	r->fired = 1;
	__atomic_add_fetch(&stat_events, 1, __ATOMIC_RELAXED);
	manager_event(EVENT_FLAG_CALL, "ICSTone",
		"Channel: %s\r\nUniqueid: %s\r\nLinkedid: %s\r\nSignature: %s\r\nOnsetMs: %d\r\n"
		"DurationMs: %d\r\nLevelDbfs: %.1f\r\nDetail: %s\r\nStartedMs: %lld\r\n",
		w->channel, w->uniqueid, w->linkedid, signature, start * HOP_MS,
		(w->window + 1 - start) * HOP_MS, round(run_level(r) * 10) / 10, detail ? detail : "",
		(long long) w->started_ms);
}

static int sit_or_long(const struct run *r)
{
	return (r->state >= S_SIT1 && r->state <= S_SIT3) || r->windows > 2;
}

/* decisions made on a cadence: a run just ended (before it joins prev) */
static void ended(struct watch *w, struct run *r)
{
	int dur = r->windows * HOP_MS, i;

	if ((r->state == S_BUSY || r->state == S_TONE) && dur >= 150 && dur <= 650) {
		int n = 1, ok = 1, first = r->start;
		for (i = w->nprev - 1; i >= 0 && n < w->busy_bursts; i--) {
			if (w->prev[i].state == r->state) {
				int d = w->prev[i].windows * HOP_MS;
				ok = ok && d >= 150 && d <= 650;
				first = w->prev[i].start;
				n++;
			}
		}
		if (n >= w->busy_bursts && ok && (r->start - first) * HOP_MS <= 1500 * (w->busy_bursts - 1)) {
			report(w, "busy", r, first, NULL);
			return;
		}
	}
	if (r->state == S_TONE && !r->fired && dur >= w->plan->ringback_on_ms[0] && dur <= w->plan->ringback_on_ms[1]) {
		report(w, "ringback", r, -1, NULL);
		return;
	}
	if (r->state == S_SIT3 && dur >= 150 && dur <= 500) {
		/* the last two of prev[-5:] that are SIT runs or longer than a boundary's 2 windows */
		const struct run *seq[2] = {NULL, NULL};
		int got = 0, lo = w->nprev > 5 ? w->nprev - 5 : 0;
		for (i = w->nprev - 1; i >= lo && got < 2; i--) {
			if (sit_or_long(&w->prev[i])) {
				seq[got++] = &w->prev[i];
			}
		}
		if (got == 2 && seq[1]->state == S_SIT1 && seq[0]->state == S_SIT2) {
			report(w, "sit", r, seq[1]->start, "sit1,sit2,sit3");
		}
	}
}

static int after_sound(struct watch *w)
{
	int i;
	for (i = w->nprev - 1; i >= 0; i--) {
		if (w->prev[i].windows > 2) {
			return w->prev[i].state == S_SOUND || w->prev[i].state == S_QUIET;
		}
	}
	return 0;
}

/* decisions made while a run lasts: held tones and dead air */
static void growing(struct watch *w, struct run *r)
{
	int dur = r->windows * HOP_MS;
	int tone_ms = w->plan->ringback_on_ms[1] + 100;

	if (r->state >= S_DTMF && r->windows >= 2) {
		char key[2] = {DTMF_KEYS[(r->state - S_DTMF) / 4][(r->state - S_DTMF) % 4], 0};
		report(w, "digits", r, -1, key);
	} else if (r->state == S_DIAL && dur >= w->dial_tone_ms) {
		report(w, "dial_tone", r, -1, NULL);
	} else if (r->state == S_TONE && dur >= (w->dial_tone_ms > tone_ms ? w->dial_tone_ms : tone_ms)) {
		report(w, "dial_tone", r, -1, NULL);
	} else if (r->state == S_RINGBACK && dur >= w->ringback_ms) {
		report(w, "ringback", r, -1, NULL);
	} else if (r->state == S_DEAD && dur >= w->drop_min_ms && r->start - w->loud_window <= SOUND_BEFORE_DROP
			&& after_sound(w)) {
		char detail[64];
		snprintf(detail, sizeof(detail), "after sound at %d ms", r->start * HOP_MS);
		report(w, "dead_air", r, -1, detail);
	}
}

static void on_window(struct watch *w, int state, double level)
{
	struct run *r = &w->run;
	if (!w->has_run || r->state != state) {
		if (w->has_run) {
			ended(w, r);
			if (w->nprev == PREV) {
				memmove(w->prev, w->prev + 1, sizeof(w->prev[0]) * (PREV - 1));
				w->nprev--;
			}
			w->prev[w->nprev++] = *r;
		}
		memset(r, 0, sizeof(*r));
		r->state = state;
		r->start = w->window;
		w->has_run = 1;
	}
	r->windows++;
	r->level_sum += level;
	/* speech or music for 100 ms or more: not a tone's cadence, nor a window straddling one */
	if (state == S_SOUND && r->windows >= 4 && level >= w->sound_dbfs) {
		w->loud_window = w->window;
	}
	w->window++;
	if (!r->fired) {
		growing(w, r);
	}
}

static void analyse(struct watch *w)
{
	double share[MAX_FREQS], s1[MAX_FREQS] = {0}, s2[MAX_FREQS] = {0}, energy = 1e-12, level;
	int i, n, nf = w->nf;

	/* Goertzel, |sum x[n] e^-jwn|^2 at each frequency: the frequencies in the inner loop, so
	 * the compiler runs them side by side (one frequency alone waits on its own last sample) */
	for (n = 0; n < WIN; n++) {
		double x = w->buf[n];
		energy += x * x;
		for (i = 0; i < nf; i++) {
			double s0 = x + w->coeff[i] * s1[i] - s2[i];
			s2[i] = s1[i];
			s1[i] = s0;
		}
	}
	for (i = 0; i < nf; i++) {
		share[i] = (s1[i] * s1[i] + s2[i] * s2[i] - w->coeff[i] * s1[i] * s2[i]) * 2 / WIN / energy;
	}
	level = 10 * log10(energy * 2 / WIN);
	on_window(w, classify(w, share, level), level);
}

static void feed(struct watch *w, const int16_t *x, int samples)
{
	int i;
	for (i = 0; i < samples; i++) {
		w->buf[w->fill++] = x[i] / 32768.0;
		if (w->fill == WIN) {
			analyse(w);
			memmove(w->buf, w->buf + HOP, sizeof(double) * (WIN - HOP));
			w->fill = WIN - HOP;
		}
	}
}

#ifdef TONEWATCH_STANDALONE
/* stdin: 8 kHz signed 16-bit samples; argv: plan; stdout: the events' fields */
int main(int argc, char **argv)
{
	static struct watch w;
	int16_t x[160];
	size_t got;
	w.plan = &PLANS[argc > 1 && !strcmp(argv[1], "eu") ? 1 : 0];
	w.dial_tone_ms = 800; w.ringback_ms = 800; w.busy_bursts = 2; w.drop_min_ms = 300;
	w.drop_floor_dbfs = -66; w.sound_dbfs = -45; w.min_tone_dbfs = -45; w.purity = 0.80;
	w.loud_window = -1000000000;
	build_bank(&w);
	while ((got = fread(x, 2, 160, stdin)) > 0) {
		feed(&w, x, got);
	}
	return 0;
}
#else
static void datastore_destroy(void *data)
{
	struct watch *w = data;
	ast_audiohook_destroy(&w->audiohook);
	ast_free(w);
}

static const struct ast_datastore_info watch_datastore = {
	.type = "ics_tonewatch",
	.destroy = datastore_destroy,
};

static int watch_cb(struct ast_audiohook *audiohook, struct ast_channel *chan, struct ast_frame *frame,
	enum ast_audiohook_direction direction)
{
	/* the watch around the hook, not a search of the channel's datastores per frame (that
	 * search, this hook's and TALK_DETECT's, was 1 % of Asterisk's samples at 160 calls). Both
	 * go together: watch_remove detaches the hook under the channel lock this runs under,
	 * before the datastore frees the watch. */
	struct watch *w = (struct watch *) ((char *) audiohook - offsetof(struct watch, audiohook));
	int64_t t0;
	int timed;

	if (audiohook->status == AST_AUDIOHOOK_STATUS_DONE || direction != AST_AUDIOHOOK_DIRECTION_READ
		|| frame->frametype != AST_FRAME_VOICE || !frame->data.ptr) {
		return 1;
	}
	timed = __atomic_add_fetch(&stat_frames, 1, __ATOMIC_RELAXED) % CPU_SAMPLE == 0; /* many threads count here */
	t0 = timed ? thread_ns() : 0;
	if (!w->started_ms) {
		struct timeval now = ast_tvnow();
		w->started_ms = (int64_t) now.tv_sec * 1000 + now.tv_usec / 1000;
		ast_copy_string(w->channel, ast_channel_name(chan), sizeof(w->channel));
		ast_copy_string(w->uniqueid, ast_channel_uniqueid(chan), sizeof(w->uniqueid));
		ast_copy_string(w->linkedid, ast_channel_linkedid(chan), sizeof(w->linkedid));
	}
	feed(w, frame->data.ptr, frame->samples);
	if (timed) {
		__atomic_add_fetch(&stat_cpu_ns, (thread_ns() - t0) * CPU_SAMPLE, __ATOMIC_RELAXED);
	}
	return 1;   /* the audio is never modified */
}

static int parse_settings(struct watch *w, const char *value)
{
	char *parse = ast_strdupa(S_OR(value, "")), *item, *eq;
	size_t i;

	w->plan = &PLANS[0];
	w->dial_tone_ms = 800; w->ringback_ms = 800; w->busy_bursts = 2; w->drop_min_ms = 300;
	w->drop_floor_dbfs = -66; w->sound_dbfs = -45; w->min_tone_dbfs = -45; w->purity = 0.80;
	while ((item = strsep(&parse, " "))) {
		if (ast_strlen_zero(item)) {
			continue;
		}
		if (!(eq = strchr(item, '='))) {
			ast_log(LOG_ERROR, "ICS_TONEWATCH: '%s' is no key=value\n", item);
			return -1;
		}
		*eq++ = '\0';
		if (!strcmp(item, "plan")) {
			for (i = 0; i < ARRAY_LEN(PLANS) && strcmp(PLANS[i].name, eq); i++) {
			}
			if (i == ARRAY_LEN(PLANS)) {
				ast_log(LOG_ERROR, "ICS_TONEWATCH: no tone plan '%s'\n", eq);
				return -1;
			}
			w->plan = &PLANS[i];
		}
#define INT_KEY(k) else if (!strcmp(item, #k)) { if (sscanf(eq, "%30d", &w->k) != 1 || w->k < 1) goto bad; }
#define DBL_KEY(k) else if (!strcmp(item, #k)) { if (sscanf(eq, "%30lf", &w->k) != 1) goto bad; }
		INT_KEY(dial_tone_ms) INT_KEY(ringback_ms) INT_KEY(busy_bursts) INT_KEY(drop_min_ms)
		DBL_KEY(drop_floor_dbfs) DBL_KEY(sound_dbfs) DBL_KEY(min_tone_dbfs) DBL_KEY(purity)
		else {
			ast_log(LOG_ERROR, "ICS_TONEWATCH: unknown setting '%s'\n", item);
			return -1;
		}
		continue;
bad:
		ast_log(LOG_ERROR, "ICS_TONEWATCH: bad value '%s' for %s\n", eq, item);
		return -1;
	}
	return 0;
}

static int watch_set(struct ast_channel *chan, const char *value)
{
	struct ast_datastore *datastore;
	struct watch *w;

	ast_channel_lock(chan);
	if (ast_channel_datastore_find(chan, &watch_datastore, NULL)) {
		/* set again (a listener restarted mid-call): the watch goes on as it was */
		ast_channel_unlock(chan);
		return 0;
	}
	if (!(datastore = ast_datastore_alloc(&watch_datastore, NULL)) || !(w = ast_calloc(1, sizeof(*w)))) {
		ast_channel_unlock(chan);
		if (datastore) {
			ast_datastore_free(datastore);
		}
		return -1;
	}
	if (parse_settings(w, value)) {
		ast_channel_unlock(chan);
		ast_free(w);
		ast_datastore_free(datastore);
		return -1;
	}
	build_bank(w);
	w->loud_window = -1000000000;
	/* no AST_AUDIOHOOK_MANIPULATE_ALL_RATES: the hook is handed 8 kHz signed linear */
	ast_audiohook_init(&w->audiohook, AST_AUDIOHOOK_TYPE_MANIPULATE, "ICS_TONEWATCH", 0);
	w->audiohook.manipulate_callback = watch_cb;
	ast_set_flag(&w->audiohook, AST_AUDIOHOOK_TRIGGER_READ);
	datastore->data = w;
	ast_channel_datastore_add(chan, datastore);
	ast_audiohook_attach(chan, &w->audiohook);
	__atomic_add_fetch(&stat_watches, 1, __ATOMIC_RELAXED);
	ast_channel_unlock(chan);
	return 0;
}

static int watch_remove(struct ast_channel *chan)
{
	struct ast_datastore *datastore;
	struct watch *w;

	ast_channel_lock(chan);
	if (!(datastore = ast_channel_datastore_find(chan, &watch_datastore, NULL))) {
		ast_channel_unlock(chan);
		return 0;
	}
	w = datastore->data;
	ast_audiohook_remove(chan, &w->audiohook);
	ast_channel_datastore_remove(chan, datastore);
	ast_channel_unlock(chan);
	ast_datastore_free(datastore);
	return 0;
}

static int tonewatch_write(struct ast_channel *chan, const char *cmd, char *data, const char *value)
{
	if (!chan) {
		return -1;
	}
	if (!strcasecmp(S_OR(data, ""), "set")) {
		return watch_set(chan, value);
	}
	if (!strcasecmp(S_OR(data, ""), "remove")) {
		return watch_remove(chan);
	}
	ast_log(LOG_ERROR, "ICS_TONEWATCH(%s): the argument is set or remove\n", S_OR(data, ""));
	return -1;
}

/* the help text inline: an out-of-tree module has no entry in Asterisk's XML documentation */
static struct ast_custom_function tonewatch_function = {
	.name = "ICS_TONEWATCH",
	.synopsis = "Watch a channel's received audio for three-way call signatures (ICSTone AMI events).",
	.syntax = "ICS_TONEWATCH(set|remove)",
	.desc = "Set(ICS_TONEWATCH(set)=plan=na dial_tone_ms=800 ringback_ms=800 busy_bursts=2 drop_min_ms=300 "
		"drop_floor_dbfs=-66 sound_dbfs=-45 min_tone_dbfs=-45 purity=0.8): any of these, space separated. "
		"Each detection raises an ICSTone manager event.",
	.write = tonewatch_write,
};

static char *cli_stats(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	switch (cmd) {
	case CLI_INIT:
		e->command = "ics tonewatch stats";
		e->usage = "Usage: ics tonewatch stats\n"
			"       Channels watched, frames analysed, CPU spent on them, events raised.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	ast_cli(a->fd, "watches %llu frames %llu cpu_ns %llu events %llu\n",
		stat_watches, stat_frames, stat_cpu_ns, stat_events);
	return CLI_SUCCESS;
}

static struct ast_cli_entry cli_entries[] = {
	AST_CLI_DEFINE(cli_stats, "ICS_TONEWATCH counters"),
};

static int unload_module(void)
{
	ast_cli_unregister_multiple(cli_entries, ARRAY_LEN(cli_entries));
	return ast_custom_function_unregister(&tonewatch_function);
}

static int load_module(void)
{
	if (ast_custom_function_register(&tonewatch_function)) {
		return AST_MODULE_LOAD_DECLINE;
	}
	ast_cli_register_multiple(cli_entries, ARRAY_LEN(cli_entries));
	return AST_MODULE_LOAD_SUCCESS;
}

AST_MODULE_INFO(ASTERISK_GPL_KEY, AST_MODFLAG_DEFAULT, "ICS three-way tone watch (ICS_TONEWATCH)",
	.support_level = AST_MODULE_SUPPORT_EXTENDED,
	.load = load_module,
	.unload = unload_module,
);
#endif
