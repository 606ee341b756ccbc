// From points per variant to what a uPlot chart draws: one shared time axis and one
// line per (figure, variant), each with its value over the whole range. Variants after
// the first are drawn dashed.
import type { Point, SeriesByVariant } from '../types'
import { summarizeEach } from './series'

/** One line of a chart: values aligned with the chart's `x`. */
export interface ChartLine {
  /** The full label: the figure, and the variant when there are several. */
  label: string
  /** The figure alone (`p95`). */
  figure: string
  /** The variant the values are of. */
  variant: string
  values: (number | null)[]
  /** The figure over the whole range: the spec's value of the variant's summary point. */
  summary: number | null
  /** A CSS custom property holding the colour, e.g. `--c-2xx`. */
  color: string
  dash?: number[]
  /** The y scale: `y` (left, default) or `y2` (right). */
  scale?: 'y' | 'y2'
  fill?: boolean
}

export interface ChartData {
  x: number[]
  lines: ChartLine[]
}

/** One figure that a chart plots for each variant. */
export interface FigureSpec {
  label: string
  color: string
  value: (p: Point) => number | null
  scale?: 'y' | 'y2'
  fill?: boolean
}

/** A moment marked on the time axis (a limiter probe or back-off). */
export interface ChartMarker {
  ts: number
  kind: 'probe' | 'backoff' | 'raise'
  label: string
}

const DASHES: number[][] = [[], [7, 4], [2, 3], [10, 3, 2, 3]]

/** Every timestamp of every variant, sorted, and each variant's points on that axis. */
export function alignSeries(series: SeriesByVariant): { x: number[]; rows: Record<string, (Point | null)[]> } {
  const stamps = new Set<number>()
  for (const points of Object.values(series)) for (const p of points) stamps.add(p.ts)
  const x = [...stamps].sort((a, b) => a - b)
  const index = new Map(x.map((ts, i) => [ts, i]))
  const rows: Record<string, (Point | null)[]> = {}
  for (const [variant, points] of Object.entries(series)) {
    const row: (Point | null)[] = new Array(x.length).fill(null)
    for (const p of points) row[index.get(p.ts)!] = p
    rows[variant] = row
  }
  return { x, rows }
}

/**
 * The chart of `specs` for each variant in `series` (variants in the order given).
 * `summaries` hold each variant's range as one point (`summarizeEach(series)`, passed in
 * when the caller has it already), so that a line's range value is read as the headline
 * figures are: a p95 from the merged histograms, never a mean of the points' p95s.
 */
export function buildChart(
  series: SeriesByVariant,
  specs: FigureSpec[],
  summaries: Record<string, Point | null> = summarizeEach(series),
): ChartData {
  const { x, rows } = alignSeries(series)
  const variants = Object.keys(rows)
  const many = variants.length > 1
  const lines: ChartLine[] = []
  variants.forEach((variant, v) => {
    const row = rows[variant]!
    const summary = summaries[variant] ?? null
    for (const spec of specs) {
      lines.push({
        label: many ? `${spec.label} · ${variant}` : spec.label,
        figure: spec.label,
        variant,
        values: row.map((p) => (p === null ? null : spec.value(p))),
        summary: summary === null ? null : spec.value(summary),
        color: spec.color,
        dash: dashOf(v),
        scale: spec.scale,
        fill: spec.fill && v === 0,
      })
    }
  })
  return { x, lines }
}

/** The dash pattern of the n-th variant (solid for the first). */
export function dashOf(index: number): number[] {
  return DASHES[index % DASHES.length]!
}

/** How many values of a chart are numbers: a chart with none has nothing to show. */
export function countValues(data: ChartData): number {
  let n = 0
  for (const line of data.lines) for (const v of line.values) if (v !== null && Number.isFinite(v)) n++
  return n
}
